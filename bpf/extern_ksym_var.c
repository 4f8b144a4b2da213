// SPDX-License-Identifier: GPL-2.0
/* A typed __ksym variable (issue 13): the per-CPU int bpf_prog_active, found in the kernel's BTF
 * (ld_imm64 with BPF_PSEUDO_BTF_ID) and read through bpf_this_cpu_ptr. The kernel then needs its
 * address: without CONFIG_KALLSYMS_ALL it refuses ("failed to find the address"), as it does for
 * libbpf. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

extern const int bpf_prog_active __ksym;

/* The program's result, kept for user space too. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} result SEC(".maps");

static __always_inline int keep(__u64 value)
{
	__u32 key = 0;

	bpf_map_update_elem(&result, &key, &value, BPF_ANY);
	return value;
}

SEC("tc")
int read_percpu(struct __sk_buff *skb)
{
	const int *active = bpf_this_cpu_ptr(&bpf_prog_active);

	return keep(*active + 1000); /* programs running on this CPU: small, never negative */
}

char LICENSE[] SEC("license") = "GPL";
