/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The counters shared by every example program.
 *
 * shared_counts is an ARRAY of 4 __u64 values indexed by a __u32:
 *   0  packets seen by a tc (cls_bpf) or tcx program on ingress
 *   1  packets seen by a tc (cls_bpf) or tcx program on egress
 *   2  packets seen by a cgroup_skb program on ingress
 *   3  packets seen by a cgroup_skb program on egress
 * The same map is declared three ways (BTF in flow_counter.c, iproute2's struct bpf_elf_map in
 * flow_counter_legacy.c, libbpf's legacy struct bpf_map_def in cgroup_counter_mapdef.c): all three
 * declarations are compatible, so one pinned map serves them all.
 */
#ifndef BPFSHARE_FLOW_COUNTER_H
#define BPFSHARE_FLOW_COUNTER_H

#define SHARED_COUNTS_ENTRIES 4

enum shared_counts_index {
	COUNT_TC_INGRESS = 0,
	COUNT_TC_EGRESS = 1,
	COUNT_CGROUP_INGRESS = 2,
	COUNT_CGROUP_EGRESS = 3,
};

#endif
