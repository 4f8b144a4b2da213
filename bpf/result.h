/* A one-slot array that a test program keeps its result in, for user space to read after
 * BPF_PROG_TEST_RUN (the return value alone is only 32 bits, and a map makes the object's maps
 * non-empty, as every example's are). Include after <bpf/bpf_helpers.h>. */
#ifndef BPFSHARE_RESULT_H
#define BPFSHARE_RESULT_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} result SEC(".maps");

static __always_inline int keep(__u64 value)
{
	__u32 key = 0;

	bpf_map_update_elem(&result, &key, &value, BPF_ANY);
	return value;
}

#endif
