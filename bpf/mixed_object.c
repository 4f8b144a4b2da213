// SPDX-License-Identifier: GPL-2.0
/*
 * mixed_object: one loadable tc program beside programs and maps bpfshare cannot load, so that
 * per-program loading is exercised: `bpfshare inspect` lists all three programs, `count_packets`
 * loads, the other two are refused by name with the reason.
 *
 *  - count_packets (tc): counts into `packets` (a plain BTF array). Loadable.
 *  - cc_init (struct_ops/cc_init) with the struct_ops map `mixed_cc` in SEC(".struct_ops"): a
 *    struct_ops program is loaded through a struct_ops map, which bpfshare does not create.
 *  - odd_one (SEC("mystery")): the section names no program type.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} packets SEC(".maps");

SEC("tc")
int count_packets(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&packets, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
	return TC_ACT_OK;
}

/* A local stand-in for the kernel's struct: the reader only sees a .struct_ops variable. */
struct mixed_congestion_ops {
	int (*init)(void *ctx);
	char name[16];
};

SEC("struct_ops/cc_init")
int cc_init(void *ctx)
{
	return 0;
}

SEC(".struct_ops")
struct mixed_congestion_ops mixed_cc = {
	.init = (void *)cc_init,
	.name = "bpfshare_mixed",
};

SEC("mystery")
int odd_one(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
