// SPDX-License-Identifier: GPL-2.0
/* Callbacks (issue 13): bpf_loop and bpf_for_each_map_elem take the address of a static function
 * (ld_imm64 with BPF_PSEUDO_FUNC), which the kernel accepts only with the object's BTF func_info. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} values SEC(".maps");

struct sum_ctx {
	__u64 sum;
};

static int add_index(__u32 index, void *data)
{
	struct sum_ctx *ctx = data;

	ctx->sum += index;
	return 0;
}

static __u64 add_value(void *map, __u32 *key, __u64 *value, void *data)
{
	struct sum_ctx *ctx = data;

	ctx->sum += *value;
	return 0;
}

SEC("tc")
int sum_with_callbacks(struct __sk_buff *skb)
{
	struct sum_ctx loop = { 0 }, each = { 0 };

	bpf_loop(10, add_index, &loop, 0);                   /* 0 + 1 + ... + 9 = 45 */
	bpf_for_each_map_elem(&values, add_value, &each, 0); /* the map's values */
	return loop.sum * 1000 + each.sum;
}

char LICENSE[] SEC("license") = "GPL";
