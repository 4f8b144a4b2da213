// SPDX-License-Identifier: GPL-2.0
/*
 * flow_counter_legacy: the tc half of flow_counter, written for iproute2's own loader.
 *
 * shared_counts is an iproute2 struct bpf_elf_map in SEC("maps") with PIN_GLOBAL_NS, so
 * `tc filter add ... bpf da obj flow_counter_legacy.o sec classifier/ingress` creates it and pins
 * it at /sys/fs/bpf/tc/globals/shared_counts (see README.md for what the system's tc accepts).
 * Same layout as flow_counter.h's: ARRAY, key __u32, value __u64, 4 entries.
 *
 * iproute2's legacy loader loads a whole section as one program, so each program has a section
 * of its own.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#include "flow_counter.h"
#include "legacy_maps.h"

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

struct bpf_elf_map SEC("maps") shared_counts = {
	.type = BPF_MAP_TYPE_ARRAY,
	.size_key = sizeof(__u32),
	.size_value = sizeof(__u64),
	.max_elem = SHARED_COUNTS_ENTRIES,
	.pinning = PIN_GLOBAL_NS,
};

static __attribute__((always_inline)) inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&shared_counts, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("classifier/ingress")
int count_ingress(struct __sk_buff *skb)
{
	count(COUNT_TC_INGRESS);
	return TC_ACT_OK;
}

SEC("classifier/egress")
int count_egress(struct __sk_buff *skb)
{
	count(COUNT_TC_EGRESS);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "GPL";
