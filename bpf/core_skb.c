// CO-RE example (built against vmlinux.h): tc programs whose field offsets, sizes, bitfields,
// enum values and type checks are relocated for the running kernel at load time.
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

// A flavour of the kernel's struct __sk_buff: matched by its essential name, with a field the
// kernel lacks (so that bpf_core_field_exists says 0).
struct __sk_buff___v1 {
	__u32 len;
	__u32 no_such_field;
} __attribute__((preserve_access_index));

// A local flavour of enum bpf_func_id: enumerators matched by essential name too.
enum bpf_func_id___local {
	BPF_FUNC_map_lookup_elem___local = 42,
	BPF_FUNC_no_such_helper = 9999,
};

// The packet's length, read through a CO-RE relocated context access.
SEC("tc")
int core_len(struct __sk_buff *skb)
{
	return skb->len;
}

// One bit per CO-RE check, all expected true on any kernel with BTF: 0x1ff.
SEC("tc")
int core_checks(struct __sk_buff *skb)
{
	struct __sk_buff___v1 *v1 = (void *)skb;
	int bits = 0;

	bits |= bpf_core_field_exists(skb->len) << 0;
	bits |= !bpf_core_field_exists(v1->no_such_field) << 1;
	bits |= bpf_core_type_exists(struct sk_buff) << 2;
	bits |= (bpf_core_field_size(skb->len) == 4) << 3;
	bits |= (bpf_core_type_size(struct tcphdr) == 20) << 4;
	bits |= (bpf_core_enum_value(enum bpf_func_id___local, BPF_FUNC_map_lookup_elem___local) == 1) << 5;
	bits |= !bpf_core_enum_value_exists(enum bpf_func_id___local, BPF_FUNC_no_such_helper) << 6;
	bits |= bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_map_lookup_elem) << 7;
	bits |= (bpf_core_type_id_kernel(struct sk_buff) != 0) << 8;
	return bits;
}

// A guarded read of a field the kernel lacks: the relocation is poisoned, but in dead code.
SEC("tc")
int core_guarded(struct __sk_buff *skb)
{
	struct __sk_buff___v1 *v1 = (void *)skb;

	if (bpf_core_field_exists(v1->no_such_field))
		return v1->no_such_field;
	return 7;
}

// Bitfields of struct tcphdr (doff:4, syn:1), read from the packet's TCP header (after a
// 14-byte Ethernet and a 20-byte IPv4 header): doff * 100 + syn * 10 + ack.
SEC("tc")
int core_bitfields(struct __sk_buff *skb)
{
	struct tcphdr th = {};

	if (bpf_skb_load_bytes(skb, 34, &th, sizeof(th)))
		return -1;
	return BPF_CORE_READ_BITFIELD(&th, doff) * 100 + BPF_CORE_READ_BITFIELD(&th, syn) * 10 +
	       BPF_CORE_READ_BITFIELD(&th, ack);
}

char LICENSE[] SEC("license") = "GPL";
