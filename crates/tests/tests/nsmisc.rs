//! Time and cgroup namespaces end to end: a tree in a namespace of its
//! own, restored into a new one, and the refusals.

mod common;

use common::*;

macro_rules! cases {
    ($pass:ident, $fail:ident, $cr:ident, $neg_cr:ident, [$($arg:expr),*]) => {
        #[test]
        fn $pass() {
            let work = Work::new(stringify!($pass));
            run_plain(&work, Program::Bin("tp_nsmisc"), &[$($arg),*]).assert_pass(&work);
        }

        #[test]
        fn $fail() {
            let work = Work::new(stringify!($fail));
            let out = run_plain(&work, Program::Bin("tp_nsmisc"), &[$($arg,)* "--corrupt"]);
            assert!(
                out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
                "the negative control did not fail: {out:?}{}",
                work.diagnostics()
            );
        }

        #[test]
        fn $cr() {
            let work = Work::new(stringify!($cr));
            run_case(&work, Program::Bin("tp_nsmisc"), &[$($arg),*], &Opts::default())
                .assert_pass(&work);
        }

        /// The negative control through a real dump and restore.
        #[test]
        fn $neg_cr() {
            let work = Work::new(stringify!($neg_cr));
            let out = run_case(
                &work,
                Program::Bin("tp_nsmisc"),
                &[$($arg,)* "--corrupt"],
                &Opts::default(),
            );
            assert!(out.result.starts_with("FAIL: "), "{out:?}");
        }
    };
}

cases!(
    selfcheck_timens,
    negative_timens,
    cr_timens,
    negative_cr_timens,
    ["--mode", "time"]
);

/// A process that unshared a time namespace for its children and never
/// entered it: refused by name.
#[test]
fn refuse_timens_unentered() {
    refused_dump(
        "refuse_timens_unentered",
        Program::Bin("tp_nsmisc"),
        &["--mode", "time-unentered"],
        &[],
        &["time namespace for its children it has not entered"],
        false,
    );
}

/// Removes the cgroups a program listed in WORK/cgroups once it is gone.
struct Cgroups(std::path::PathBuf);

impl Drop for Cgroups {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        for d in text.lines().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !std::path::Path::new(d).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

macro_rules! cgroup_case {
    ($name:ident, $args:expr, $opts:expr, $want_pass:expr) => {
        #[test]
        fn $name() {
            let work = Work::new(stringify!($name));
            let _clean = Cgroups(work.path("cgroups"));
            let out = if $opts {
                run_case(&work, Program::Bin("tp_nsmisc"), $args, &Opts::default())
            } else {
                run_plain(&work, Program::Bin("tp_nsmisc"), $args)
            };
            if $want_pass {
                out.assert_pass(&work);
            } else {
                assert!(out.result.starts_with("FAIL: "), "{out:?}");
            }
        }
    };
}

cgroup_case!(selfcheck_cgroupns, &["--mode", "cgroup"], false, true);
cgroup_case!(
    negative_cgroupns,
    &["--mode", "cgroup", "--corrupt"],
    false,
    false
);
cgroup_case!(cr_cgroupns, &["--mode", "cgroup"], true, true);
cgroup_case!(
    negative_cr_cgroupns,
    &["--mode", "cgroup", "--corrupt"],
    true,
    false
);
