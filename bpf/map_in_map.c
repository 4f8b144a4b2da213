// SPDX-License-Identifier: GPL-2.0
/*
 * map_in_map: an array of maps whose slots are filled from the object (libbpf's
 * `.values = { [i] = &inner }`): loading `read_inner` creates `inner_a` and `inner_b` and puts
 * them in slots 0 and 2 of `outer`. read_inner returns inner map 0's value at key 0 (or 255
 * without the slot), so a test sees the slot through BPF_PROG_TEST_RUN.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct inner_map inner_a SEC(".maps"), inner_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct inner_map);
} outer SEC(".maps") = {
	.values = {
		[0] = &inner_a,
		[2] = &inner_b,
	},
};

SEC("tc")
int read_inner(struct __sk_buff *skb)
{
	__u32 key = 0;
	void *inner = bpf_map_lookup_elem(&outer, &key);
	__u32 *value;

	if (!inner)
		return 255;
	value = bpf_map_lookup_elem(inner, &key);
	return value ? *value : 254;
}

char LICENSE[] SEC("license") = "GPL";
