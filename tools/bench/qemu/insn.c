/* A qemu-user TCG plugin that counts the guest instructions executed, in
 * every thread, and prints the total at exit. With `out=FILE`
 * (`-plugin libinsn.so,out=FILE`) it also writes, per translated block,
 * its start address and the instructions executed in it, for
 * tools/bench/arm_profile.py to attribute to functions (a third column,
 * the block's length in instructions, lets tools/bench/arm_lib_profile.py
 * weigh each instruction of it).
 *
 * tools/bench/arm_icount.sh uses it to compare lookout's variants on
 * aarch64 without a board: an instruction count, not a time (it sees no
 * cache misses, pipeline stalls or differences in instruction cost), but
 * one that does not depend on the host's load.
 *
 * Debian's qemu-user 7.2 is built with plugin support but ships neither
 * plugins nor qemu-plugin.h, so the few declarations needed are written
 * out here (plugin API version 1, stable since qemu 4.2). */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

/* One record per translation (a block translated twice has two). */
struct block {
    uint64_t vaddr, insns, execs;
};
enum { MAX_BLOCKS = 1 << 22 };
static struct block *blocks;
static uint64_t nblocks;
static const char *out;

static void exec(unsigned int vcpu, void *b) {
    __atomic_fetch_add(&((struct block *)b)->execs, 1, __ATOMIC_RELAXED);
}

static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    uint64_t i = __atomic_fetch_add(&nblocks, 1, __ATOMIC_RELAXED);
    if (i >= MAX_BLOCKS) {
        return; /* reported at exit: the total would be short */
    }
    blocks[i] = (struct block){qemu_plugin_tb_vaddr(tb), qemu_plugin_tb_n_insns(tb), 0};
    qemu_plugin_register_vcpu_tb_exec_cb(tb, exec, QEMU_PLUGIN_CB_NO_REGS, &blocks[i]);
}

static void done(qemu_plugin_id_t id, void *unused) {
    uint64_t total = 0, n = nblocks < MAX_BLOCKS ? nblocks : MAX_BLOCKS;
    FILE *f = out ? fopen(out, "w") : NULL;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t insns = blocks[i].insns * __atomic_load_n(&blocks[i].execs, __ATOMIC_RELAXED);
        total += insns;
        if (f && insns) {
            fprintf(f, "%" PRIx64 "\t%" PRIu64 "\t%" PRIu64 "\n", blocks[i].vaddr, insns, blocks[i].insns);
        }
    }
    if (f) {
        fclose(f);
    }
    char line[128];
    snprintf(line, sizeof line, "guest instructions: %" PRIu64 "%s\n", total,
             nblocks > MAX_BLOCKS ? " (too many blocks: incomplete)" : "");
    qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = argv[i] + 4;
        }
    }
    blocks = calloc(MAX_BLOCKS, sizeof *blocks);
    if (!blocks) {
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, done, NULL);
    return 0;
}
