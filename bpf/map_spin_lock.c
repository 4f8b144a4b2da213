// SPDX-License-Identifier: GPL-2.0
/* A struct bpf_spin_lock in a hash map's value (issue 13): the verifier takes bpf_spin_lock only on
 * a map created with its BTF, which tells the kernel where the lock lies in the value. No callback:
 * the program itself needs no BTF. count_locked returns the count after adding one, under the lock. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct locked_value {
	__u64 before;
	struct bpf_spin_lock lock;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct locked_value);
	__uint(max_entries, 4);
} locked SEC(".maps");

SEC("tc")
int count_locked(struct __sk_buff *skb)
{
	struct locked_value init = {}, *value;
	__u32 key = 1;
	__u64 count;

	value = bpf_map_lookup_elem(&locked, &key);
	if (!value) {
		bpf_map_update_elem(&locked, &key, &init, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&locked, &key);
		if (!value)
			return 0;
	}
	bpf_spin_lock(&value->lock);
	count = ++value->count;
	bpf_spin_unlock(&value->lock);
	return count;
}

char LICENSE[] SEC("license") = "GPL";
