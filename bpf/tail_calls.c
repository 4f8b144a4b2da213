// SPDX-License-Identifier: GPL-2.0
/*
 * tail_calls: a prog array whose slots are filled from the object (libbpf's
 * `.values = { [i] = &prog }`), so that loading `entry` alone gives a working pipeline.
 *
 * entry -> jumps[0] = stage_one -> jumps[1] = stage_two. Each stage adds its bit to `trail[0]`;
 * stage_two returns 42. Without the slots filled, entry's tail call falls through and returns 1.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} trail SEC(".maps");

static __attribute__((always_inline)) inline void mark(__u64 bit)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&trail, &key);

	if (value)
		__sync_fetch_and_or(value, bit);
}

SEC("tc")
int stage_two(struct __sk_buff *skb)
{
	mark(4);
	return 42;
}

struct jump_table {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, sizeof(__u32));
	__array(values, int(struct __sk_buff *));
};

extern struct jump_table jumps SEC(".maps");

SEC("tc")
int stage_one(struct __sk_buff *skb)
{
	mark(2);
	bpf_tail_call(skb, &jumps, 1);
	return 2;
}

struct jump_table jumps SEC(".maps") = {
	.values = {
		[0] = (void *)&stage_one,
		[1] = (void *)&stage_two,
	},
};

SEC("tc")
int entry(struct __sk_buff *skb)
{
	mark(1);
	bpf_tail_call(skb, &jumps, 0);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
