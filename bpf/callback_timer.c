// SPDX-License-Identifier: GPL-2.0
/* Timers (issue 13): a struct bpf_timer in an array map's value, which the kernel accepts only in a
 * map created with its BTF ("map 'timers' has to have BTF in order to use bpf_timer"); the timer's
 * callback is a function's address (ld_imm64 with BPF_PSEUDO_FUNC), which needs BTF func_info.
 * arm_timer arms a 1 us timer; its callback, run by the kernel in softirq context, counts in fired. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/time.h>
#include <bpf/bpf_helpers.h>

struct timer_value {
	__u64 armed;
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct timer_value);
	__uint(max_entries, 1);
} timers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} fired SEC(".maps");

static int on_timer(void *map, __u32 *key, struct timer_value *value)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&fired, &zero);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

SEC("tc")
int arm_timer(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct timer_value *value = bpf_map_lookup_elem(&timers, &zero);

	if (!value)
		return 1;
	/* -EBUSY on every run but the first (already initialised): armed again all the same. */
	bpf_timer_init(&value->timer, &timers, CLOCK_MONOTONIC);
	if (bpf_timer_set_callback(&value->timer, on_timer))
		return 2;
	if (bpf_timer_start(&value->timer, 1000 /* ns */, 0))
		return 3;
	__sync_fetch_and_add(&value->armed, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
