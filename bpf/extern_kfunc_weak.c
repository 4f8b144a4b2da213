// SPDX-License-Identifier: GPL-2.0
/* A weak kfunc no kernel has (issue 13): its existence test reads as false and the guarded call,
 * poisoned as libbpf does, is dead code the verifier removes. A present kfunc tested the same way
 * reads as true. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

extern void bpfshare_missing_kfunc(void) __ksym __weak;
extern void bpf_rcu_read_lock(void) __ksym __weak;
extern void bpf_rcu_read_unlock(void) __ksym __weak;

#include "result.h"

SEC("tc")
int weak_kfuncs(struct __sk_buff *skb)
{
	int ret = 0;

	if (bpfshare_missing_kfunc) {
		bpfshare_missing_kfunc();
		ret |= 1;
	}
	if (bpf_rcu_read_lock) {
		bpf_rcu_read_lock();
		bpf_rcu_read_unlock();
		ret |= 2;
	}
	return keep(ret); /* 2 */
}

char LICENSE[] SEC("license") = "GPL";
