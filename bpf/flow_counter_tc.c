// SPDX-License-Identifier: GPL-2.0
/*
 * flow_counter_tc: the tc half of flow_counter for today's tc (iproute2 built with libbpf 1.x).
 *
 * Such a tc loads every object through libbpf, which refuses struct bpf_elf_map (SEC("maps")), so
 * this is flow_counter_legacy.c with shared_counts declared as a BTF map pinned by name: tc pins it
 * at /sys/fs/bpf/tc/globals/shared_counts, where an iproute2-legacy loader would have put it.
 * One program per section, so `tc ... bpf da obj flow_counter_tc.o sec classifier/egress` picks
 * count_egress. Same map layout as flow_counter.h's.
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

char LICENSE[] SEC("license") = "GPL";
