/*
 * criu.h for stasis's libcriu (crates/libcriu): the C interface of criu's
 * client library (function names, argument types, enum values and the
 * feature-check struct are criu's), answered by `stasis swrk` over criu's
 * RPC. Written for stasis; see docs/architecture.md, "libcriu".
 *
 * Every criu_X(...) acts on one process-wide set of options made by
 * criu_init_opts(); criu_local_X(opts, ...) on a set of the caller's.
 * Setters record; nothing reaches stasis before a request (criu_dump,
 * criu_restore, ...), which stasis applies or refuses option by option.
 * Requests return 0 (criu_dump: 1 when the tree was restored after it;
 * criu_restore*: the PID of the restored root) or a negative errno.
 */
#ifndef STASIS_CRIU_H
#define STASIS_CRIU_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum criu_service_comm { CRIU_COMM_SK, CRIU_COMM_FD, CRIU_COMM_BIN };

enum criu_cg_mode {
	CRIU_CG_MODE_IGNORE = 0,
	CRIU_CG_MODE_NONE = 1,
	CRIU_CG_MODE_PROPS = 2,
	CRIU_CG_MODE_SOFT = 3,
	CRIU_CG_MODE_FULL = 4,
	CRIU_CG_MODE_STRICT = 5,
	CRIU_CG_MODE_DEFAULT = 6,
};

enum criu_network_lock_method {
	CRIU_NETWORK_LOCK_IPTABLES = 1,
	CRIU_NETWORK_LOCK_NFTABLES = 2,
	CRIU_NETWORK_LOCK_SKIP = 3,
};

enum criu_pre_dump_mode { CRIU_PRE_DUMP_SPLICE = 1, CRIU_PRE_DUMP_READ = 2 };

/* Features asked with criu_feature_check: set a field true to ask; it
 * comes back true only if stasis has the feature. */
struct criu_feature_check {
	bool mem_track;
	bool lazy_pages;
	bool pidfd_store;
};

typedef struct criu_opts criu_opts;
/* What a notify callback gets besides the action name: read it with
 * criu_notify_pid(). */
typedef struct criu_notify *criu_notify_arg_t;
typedef void *criu_predump_info;

int criu_notify_pid(criu_notify_arg_t na);
int criu_get_orphan_pts_master_fd(void);

#define STASIS_CRIU_SETTERS(P, O)                                                      \
	void P##set_service_fd(O int fd);                                              \
	int P##set_service_address(O const char *path);                                \
	int P##set_service_binary(O const char *path);                                 \
	void P##set_pid(O int pid);                                                    \
	void P##set_images_dir_fd(O int fd);                                           \
	int P##set_parent_images(O const char *path);                                  \
	void P##set_work_dir_fd(O int fd);                                             \
	void P##set_leave_running(O bool v);                                           \
	void P##set_ext_unix_sk(O bool v);                                             \
	int P##add_unix_sk(O unsigned int inode);                                      \
	void P##set_tcp_established(O bool v);                                         \
	void P##set_tcp_skip_in_flight(O bool v);                                      \
	void P##set_tcp_close(O bool v);                                               \
	void P##set_weak_sysctls(O bool v);                                            \
	void P##set_evasive_devices(O bool v);                                         \
	void P##set_shell_job(O bool v);                                               \
	void P##set_orphan_pts_master(O bool v);                                       \
	void P##set_file_locks(O bool v);                                              \
	void P##set_track_mem(O bool v);                                               \
	void P##set_auto_dedup(O bool v);                                              \
	void P##set_force_irmap(O bool v);                                             \
	void P##set_link_remap(O bool v);                                              \
	void P##set_log_level(O int level);                                            \
	int P##set_log_file(O const char *name);                                       \
	void P##set_cpu_cap(O unsigned int cap);                                       \
	int P##set_root(O const char *root);                                           \
	void P##set_manage_cgroups(O bool v);                                          \
	void P##set_manage_cgroups_mode(O enum criu_cg_mode mode);                     \
	int P##set_freeze_cgroup(O const char *name);                                  \
	int P##set_lsm_profile(O const char *name);                                    \
	int P##set_lsm_mount_context(O const char *name);                              \
	void P##set_timeout(O unsigned int seconds);                                   \
	void P##set_auto_ext_mnt(O bool v);                                            \
	void P##set_ext_sharing(O bool v);                                             \
	void P##set_ext_masters(O bool v);                                             \
	int P##set_exec_cmd(O int argc, char *argv[]);                                 \
	int P##add_ext_mount(O const char *key, const char *val);                      \
	int P##add_veth_pair(O const char *in, const char *out);                       \
	int P##add_cg_root(O const char *ctrl, const char *path);                      \
	int P##add_enable_fs(O const char *fs);                                        \
	int P##add_skip_mnt(O const char *mnt);                                        \
	void P##set_ghost_limit(O unsigned int limit);                                 \
	int P##add_irmap_path(O const char *path);                                     \
	int P##add_inherit_fd(O int fd, const char *key);                              \
	int P##add_external(O const char *key);                                        \
	int P##set_page_server_address_port(O const char *address, int port);          \
	int P##set_pre_dump_mode(O enum criu_pre_dump_mode mode);                      \
	void P##set_pidfd_store_sk(O int sk);                                          \
	int P##set_network_lock(O enum criu_network_lock_method method);               \
	int P##join_ns_add(O const char *ns, const char *ns_file, const char *extra);  \
	void P##set_mntns_compat_mode(O bool v);                                       \
	int P##add_cg_props(O const char *stream);                                     \
	int P##add_cg_props_file(O const char *path);                                  \
	int P##add_cg_dump_controller(O const char *name);                             \
	int P##add_cg_yard(O const char *path);                                        \
	void P##set_notify_cb(O int (*cb)(char *action, criu_notify_arg_t na));        \
	int P##check(O_ALONE);                                                         \
	int P##dump(O_ALONE);                                                          \
	int P##pre_dump(O_ALONE);                                                      \
	int P##restore(O_ALONE);                                                       \
	int P##restore_child(O_ALONE);                                                 \
	int P##dump_iters(O int (*more)(criu_predump_info pi));                        \
	int P##get_version(O_ALONE);                                                   \
	int P##check_version(O int minimum);                                           \
	int P##feature_check(O struct criu_feature_check *features, size_t size);

/* The process-wide set. */
int criu_init_opts(void);
void criu_free_opts(void);
#define O
#define O_ALONE void
STASIS_CRIU_SETTERS(criu_, O)
#undef O
#undef O_ALONE

/* A set of the caller's. */
int criu_local_init_opts(criu_opts **opts);
void criu_local_free_opts(criu_opts *opts);
#define O criu_opts *opts,
#define O_ALONE criu_opts *opts
STASIS_CRIU_SETTERS(criu_local_, O)
#undef O
#undef O_ALONE
#undef STASIS_CRIU_SETTERS

#ifdef __cplusplus
}
#endif

#endif
