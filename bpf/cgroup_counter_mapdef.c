// SPDX-License-Identifier: GPL-2.0
/*
 * cgroup_counter_mapdef: the cgroup half of flow_counter, with the map declared the way libbpf
 * did before 1.0: a struct bpf_map_def in SEC("maps"). libbpf 1.x refuses such objects; bpfshare
 * loads them and binds shared_counts to the map that tc pinned (same layout as flow_counter.h's).
 */
#include <linux/bpf.h>

#include "flow_counter.h"
#include "legacy_maps.h"

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

struct bpf_map_def SEC("maps") shared_counts = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = SHARED_COUNTS_ENTRIES,
};

static __attribute__((always_inline)) inline int count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&shared_counts, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
	return 1; /* allow */
}

SEC("cgroup_skb/ingress")
int count_cgroup_ingress(struct __sk_buff *skb)
{
	return count(COUNT_CGROUP_INGRESS);
}

SEC("cgroup_skb/egress")
int count_cgroup_egress(struct __sk_buff *skb)
{
	return count(COUNT_CGROUP_EGRESS);
}

char __license[] SEC("license") = "GPL";
