// SPDX-License-Identifier: GPL-2.0
/*
 * flow_counter: packet counters for tc, tcx and cgroup_skb programs, in one BTF-defined map.
 *
 * shared_counts (see flow_counter.h): ARRAY, key __u32 index, value __u64, 4 entries,
 * pinned by name (LIBBPF_PIN_BY_NAME). Each program adds 1 to its own index and lets the
 * packet through: TC_ACT_OK for tc, TCX_NEXT for tcx, 1 (allow) for cgroup_skb.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "flow_counter.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHARED_COUNTS_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shared_counts SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&shared_counts, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("tc")
int count_ingress(struct __sk_buff *skb)
{
	count(COUNT_TC_INGRESS);
	return TC_ACT_OK;
}

SEC("tc")
int count_egress(struct __sk_buff *skb)
{
	count(COUNT_TC_EGRESS);
	return TC_ACT_OK;
}

SEC("tcx/ingress")
int count_tcx_ingress(struct __sk_buff *skb)
{
	count(COUNT_TC_INGRESS);
	/* TCX_NEXT (== TC_ACT_UNSPEC): a counter lets the next tcx program and the classic tc filters
	 * run too; TCX_PASS (== TC_ACT_OK) would end the ingress hook here. */
	return TC_ACT_UNSPEC;
}

SEC("cgroup_skb/ingress")
int count_cgroup_ingress(struct __sk_buff *skb)
{
	count(COUNT_CGROUP_INGRESS);
	return 1;
}

SEC("cgroup_skb/egress")
int count_cgroup_egress(struct __sk_buff *skb)
{
	count(COUNT_CGROUP_EGRESS);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
