// SPDX-License-Identifier: GPL-2.0
/*
 * features: what a loader must link and relocate beyond map references, in one tc program.
 *  - global data: counter_index in .rodata (set by the loader before load, libbpf style),
 *    hits in .bss, last_len in .data;
 *  - bpf-to-bpf calls: count_features -> account() -> bump(), both .text subprograms, bump()
 *    referring to the shared_counts map (see flow_counter.h).
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

volatile const __u32 counter_index = COUNT_TC_INGRESS;
static __u64 hits;
__u32 last_len = 1;

static __noinline int bump(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&shared_counts, &index);

	if (!value)
		return 0;
	__sync_fetch_and_add(value, 1);
	return 1;
}

static __noinline int account(__u32 len)
{
	__sync_fetch_and_add(&hits, 1);
	last_len = len;
	return bump(counter_index);
}

SEC("tc")
int count_features(struct __sk_buff *skb)
{
	account(skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
