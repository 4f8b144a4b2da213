// CO-RE example that the kernel must refuse: an unguarded read of a field no kernel has. The
// loader poisons the instruction (as libbpf does) and names the field in its error.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct __sk_buff___bad {
	__u32 no_such_field;
} __attribute__((preserve_access_index));

SEC("tc")
int core_missing(struct __sk_buff *skb)
{
	return ((struct __sk_buff___bad *)skb)->no_such_field;
}

char LICENSE[] SEC("license") = "GPL";
