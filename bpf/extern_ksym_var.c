// SPDX-License-Identifier: GPL-2.0
/* A typed __ksym variable (issue 13): the per-CPU int bpf_prog_active, found in the kernel's BTF
 * (ld_imm64 with BPF_PSEUDO_BTF_ID) and read through bpf_this_cpu_ptr. The kernel then needs its
 * address: without CONFIG_KALLSYMS_ALL it refuses ("failed to find the address"), as it does for
 * libbpf. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

extern const int bpf_prog_active __ksym;

#include "result.h"

SEC("tc")
int read_percpu(struct __sk_buff *skb)
{
	const int *active = bpf_this_cpu_ptr(&bpf_prog_active);

	return keep(*active + 1000); /* programs running on this CPU: small, never negative */
}

char LICENSE[] SEC("license") = "GPL";
