// SPDX-License-Identifier: GPL-2.0
/* kfunc calls (issue 13): kfuncs every program type may call (the kernel's common kfunc set),
 * found by name in the kernel's BTF: an RCU read section around a numbers iterator summing 0..9. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct bpf_iter_num {
	__u64 __opaque[1];
} __attribute__((aligned(8)));

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;

#include "result.h"

SEC("tc")
int call_kfuncs(struct __sk_buff *skb)
{
	struct bpf_iter_num it;
	int sum = 0, *v;

	bpf_rcu_read_lock();
	bpf_rcu_read_unlock();
	bpf_iter_num_new(&it, 0, 10);
	while ((v = bpf_iter_num_next(&it)))
		sum += *v;
	bpf_iter_num_destroy(&it);
	return keep(sum); /* 45 */
}

char LICENSE[] SEC("license") = "GPL";
