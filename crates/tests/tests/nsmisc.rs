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
