// SPDX-License-Identifier: GPL-2.0
/* A callback taken in a global subprogram, beside a static one (issue 13): subprograms are
 * appended depth first, as libbpf does, so the instructions (and program tag) are libbpf's. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "result.h"

static int add_double(__u32 index, void *ctx)
{
	*(__u64 *)ctx += index * 2;
	return 0;
}

__attribute__((noinline)) int sum_doubles(int n)
{
	__u64 sum = 0;

	bpf_loop(n, add_double, &sum, 0);
	return sum;
}

static __attribute__((noinline)) int plus_one(int x)
{
	return x + 1;
}

SEC("tc")
int nested_callbacks(struct __sk_buff *skb)
{
	return keep(sum_doubles(5) + plus_one(skb->len > 1000)); /* 20 + 1 for a short packet */
}

char LICENSE[] SEC("license") = "GPL";
