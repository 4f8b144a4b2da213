// SPDX-License-Identifier: GPL-2.0
/*
 * custom_pinning: an iproute2 struct bpf_elf_map with a custom pinning value (42), which iproute2
 * resolves through its bpf_pinning file ("42 <subdir>": pinned at <bpffs>/<subdir>/<name>).
 * bpfshare does the same at load time, and refuses the map by name when the file lacks the value.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#include "legacy_maps.h"

#define SEC(name) __attribute__((section(name), used))
#define CUSTOM_PINNING 42

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

struct bpf_elf_map SEC("maps") custom_counts = {
	.type = BPF_MAP_TYPE_ARRAY,
	.size_key = sizeof(__u32),
	.size_value = sizeof(__u64),
	.max_elem = 1,
	.pinning = CUSTOM_PINNING,
};

SEC("classifier")
int count_custom(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&custom_counts, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "GPL";
