// SPDX-License-Identifier: GPL-2.0
/* __kconfig externs (issue 13): values libbpf fills in from the running kernel's configuration
 * (/proc/config.gz or /boot/config-$(uname -r)) and its "virtual" LINUX_* values. The program
 * copies each into the `kconfig_out` array so a test can read what the loader filled in. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h> /* enum libbpf_tristate */


extern int CONFIG_HZ __kconfig;
extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern _Bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;
extern _Bool LINUX_HAS_BPF_COOKIE __kconfig;
extern _Bool CONFIG_BPF_SYSCALL __kconfig;
extern enum libbpf_tristate CONFIG_BPF_JIT __kconfig;
extern char CONFIG_DEFAULT_HOSTNAME[16] __kconfig;
/* Declared by no kernel: weak, so it reads as zero. */
extern int CONFIG_BPFSHARE_MISSING __kconfig __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} kconfig_out SEC(".maps");

static __always_inline void put(__u32 key, __u64 value)
{
	bpf_map_update_elem(&kconfig_out, &key, &value, BPF_ANY);
}

SEC("tc")
int read_kconfig(struct __sk_buff *skb)
{
	put(0, CONFIG_HZ);
	put(1, LINUX_KERNEL_VERSION);
	put(2, LINUX_HAS_SYSCALL_WRAPPER);
	put(3, LINUX_HAS_BPF_COOKIE);
	put(4, CONFIG_BPF_SYSCALL);
	put(5, CONFIG_BPF_JIT);
	put(6, CONFIG_DEFAULT_HOSTNAME[0]);
	put(7, CONFIG_BPFSHARE_MISSING);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
