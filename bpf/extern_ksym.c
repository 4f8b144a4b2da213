// SPDX-License-Identifier: GPL-2.0
/* __ksym variables (issue 13): a typeless one (its address, from /proc/kallsyms), a typed one (a
 * kernel function found in the kernel's BTF, whose address the program tests, as bpf_ksym_exists
 * does) and weak ones that no kernel defines (address zero, typed pointer NULL). A typed per-CPU
 * variable is in extern_ksym_var.c. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

extern const void bpf_prog_put __ksym;                   /* typeless: kallsyms here lists text only */
extern void bpf_rcu_read_lock(void) __ksym __weak;       /* typed: a FUNC in the kernel's BTF */
extern const void bpfshare_missing_symbol __ksym __weak; /* typeless, missing */
extern const int bpfshare_missing_var __ksym __weak;     /* typed, missing */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} ksym_out SEC(".maps");

static __always_inline void put(__u32 key, __u64 value)
{
	bpf_map_update_elem(&ksym_out, &key, &value, BPF_ANY);
}

SEC("tc")
int read_ksyms(struct __sk_buff *skb)
{
	put(0, (__u64)&bpf_prog_put);
	put(1, bpf_rcu_read_lock ? 1 : 0);
	put(2, (__u64)&bpfshare_missing_symbol);
	put(3, (__u64)&bpfshare_missing_var);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
