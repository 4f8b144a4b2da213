/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Legacy SEC("maps") map definitions, declared here because no installed header still has them:
 *  - struct bpf_elf_map: iproute2's, as in iproute2's include/bpf_elf.h (36 bytes);
 *  - struct bpf_map_def: libbpf's before 1.0 removed it from bpf_helpers.h (20 bytes).
 */
#ifndef BPFSHARE_LEGACY_MAPS_H
#define BPFSHARE_LEGACY_MAPS_H

#include <linux/types.h>

/* iproute2: bpf_elf_map.pinning */
#define PIN_NONE 0
#define PIN_OBJECT_NS 1 /* /sys/fs/bpf/tc/<object hash>/<name> */
#define PIN_GLOBAL_NS 2 /* /sys/fs/bpf/tc/globals/<name> */

struct bpf_elf_map {
	__u32 type;
	__u32 size_key;
	__u32 size_value;
	__u32 max_elem;
	__u32 flags;
	__u32 id;
	__u32 pinning;
	__u32 inner_id;
	__u32 inner_idx;
};

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

#endif
