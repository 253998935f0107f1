//! Preflight: an unprivileged caller may only restore credentials it could
//! obtain itself.
//!
//! A restore rebuilds the process with the credentials stored in the image.
//! Run by root that is the point; run by anybody else it must not become a
//! way to acquire an identity or a privilege. So when the caller's real uid
//! is not 0, every credential of the image must be one an unprivileged
//! process with the caller's credentials could give itself with set*id(2),
//! capset(2) and prctl(2) calls that need no capability. Precisely (the
//! kernel's own rules, see credentials(7), capabilities(7)):
//!
//! * each of the real, effective, saved and filesystem **uids** is one of
//!   the caller's real, effective or saved uids (setresuid/setfsuid);
//! * the same for **gids**;
//! * the supplementary **groups** are exactly the caller's, as a set
//!   (setgroups needs CAP_SETGID, even to drop one);
//! * **permitted** is a subset of the caller's permitted set; **effective**
//!   and **ambient** are subsets of the image's permitted set (ambient also
//!   of its inheritable set); **inheritable** is a subset of the caller's
//!   inheritable ∪ (permitted ∩ bounding);
//! * the **bounding** set and **securebits** equal the caller's, unless the
//!   caller holds CAP_SETPCAP in its permitted set (dropping bounding
//!   capabilities and changing securebits need it), in which case bounding
//!   only has to be a subset;
//! * **no_new_privs**: a caller that has it can only restore an image that
//!   has it (it cannot be cleared).
//!
//! Capabilities that would let the caller *change* identity (CAP_SETUID,
//! CAP_SETGID) are deliberately not taken into account: an unprivileged
//! restore is of an identity the caller already holds. The check runs in
//! preflight, before anything is created.

use stasis_image::Creds;

const CAP_SETPCAP: u64 = 1 << 8;

/// The caller's own credentials, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_bounding: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

impl Caller {
    /// Reads the calling process's credentials (/proc/self/status, prctl).
    pub(crate) fn current() -> Result<Caller, String> {
        let st = stasis_proc::read_status(std::process::id()).map_err(|e| e.to_string())?;
        let securebits = stasis_sys::util::securebits().map_err(|e| e.to_string())?;
        Ok(Caller {
            uids: st.uids,
            gids: st.gids,
            groups: st.groups,
            cap_inheritable: st.cap_inh,
            cap_permitted: st.cap_prm,
            cap_bounding: st.cap_bnd,
            securebits,
            no_new_privs: st.no_new_privs,
        })
    }

    /// Whether the caller is exempt from the check (real uid 0).
    pub(crate) fn is_root(&self) -> bool {
        self.uids[0] == 0
    }
}

fn subset(a: u64, b: u64) -> bool {
    a & !b == 0
}

/// Why an unprivileged `caller` could not obtain `img` by itself, or None
/// if it could (see the module documentation for the rules).
pub(crate) fn refusal(caller: &Caller, img: &Creds) -> Option<String> {
    let own_uids = &caller.uids[..3];
    let own_gids = &caller.gids[..3];
    if let Some(u) = img.uids.iter().find(|u| !own_uids.contains(u)) {
        return Some(format!(
            "uid {u} is not one of the caller's uids {own_uids:?}"
        ));
    }
    if let Some(g) = img.gids.iter().find(|g| !own_gids.contains(g)) {
        return Some(format!(
            "gid {g} is not one of the caller's gids {own_gids:?}"
        ));
    }
    let mut want: Vec<u32> = img.groups.clone();
    let mut have: Vec<u32> = caller.groups.clone();
    want.sort_unstable();
    want.dedup();
    have.sort_unstable();
    have.dedup();
    if want != have {
        return Some(format!(
            "supplementary groups {want:?} differ from the caller's {have:?}"
        ));
    }
    if !subset(img.cap_permitted, caller.cap_permitted) {
        return Some(format!(
            "permitted capabilities {:#x} exceed the caller's {:#x}",
            img.cap_permitted, caller.cap_permitted
        ));
    }
    if !subset(img.cap_effective, img.cap_permitted) {
        return Some(format!(
            "effective capabilities {:#x} are not within the permitted set {:#x}",
            img.cap_effective, img.cap_permitted
        ));
    }
    let inh_ok = caller.cap_inheritable | (caller.cap_permitted & caller.cap_bounding);
    if !subset(img.cap_inheritable, inh_ok) {
        return Some(format!(
            "inheritable capabilities {:#x} exceed what the caller may set ({inh_ok:#x})",
            img.cap_inheritable
        ));
    }
    if !subset(img.cap_ambient, img.cap_permitted & img.cap_inheritable) {
        return Some(format!(
            "ambient capabilities {:#x} are not both permitted and inheritable",
            img.cap_ambient
        ));
    }
    let setpcap = caller.cap_permitted & CAP_SETPCAP != 0;
    let bounding_ok = if setpcap {
        subset(img.cap_bounding, caller.cap_bounding)
    } else {
        img.cap_bounding == caller.cap_bounding
    };
    if !bounding_ok {
        return Some(format!(
            "bounding set {:#x} cannot be made from the caller's {:#x}",
            img.cap_bounding, caller.cap_bounding
        ));
    }
    if !setpcap && img.securebits != caller.securebits {
        return Some(format!(
            "securebits {:#x} differ from the caller's {:#x} (changing them needs CAP_SETPCAP)",
            img.securebits, caller.securebits
        ));
    }
    if caller.no_new_privs && !img.no_new_privs {
        return Some("the caller has no_new_privs, which cannot be cleared".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Caller {
        Caller {
            uids: [65534; 4],
            gids: [65534; 4],
            groups: vec![],
            cap_inheritable: 0,
            cap_permitted: 0,
            cap_bounding: 0x1ff_ffff_ffff,
            securebits: 0,
            no_new_privs: false,
        }
    }

    fn own(c: &Caller) -> Creds {
        Creds {
            uids: c.uids,
            gids: c.gids,
            groups: c.groups.clone(),
            cap_inheritable: c.cap_inheritable,
            cap_permitted: c.cap_permitted,
            cap_effective: 0,
            cap_bounding: c.cap_bounding,
            cap_ambient: 0,
            securebits: c.securebits,
            no_new_privs: c.no_new_privs,
        }
    }

    #[test]
    fn own_credentials_pass() {
        let c = nobody();
        assert_eq!(refusal(&c, &own(&c)), None);
        // Switching between own real/effective/saved ids is allowed.
        let mut c2 = c.clone();
        c2.uids = [1000, 65534, 1000, 65534];
        let mut img = own(&c2);
        img.uids = [65534, 1000, 65534, 1000];
        assert_eq!(refusal(&c2, &img), None);
    }

    #[test]
    fn foreign_credentials_refused() {
        let c = nobody();
        type Edit = Box<dyn Fn(&mut Creds)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("uid 0", Box::new(|i| i.uids[1] = 0)),
            ("fs uid", Box::new(|i| i.uids[3] = 1)),
            ("gid 0", Box::new(|i| i.gids[0] = 0)),
            ("groups", Box::new(|i| i.groups = vec![0])),
            ("permitted", Box::new(|i| i.cap_permitted = 1)),
            ("effective", Box::new(|i| i.cap_effective = 1)),
            ("inheritable", Box::new(|i| i.cap_inheritable = 1 << 21)),
            ("ambient", Box::new(|i| i.cap_ambient = 1)),
            ("bounding", Box::new(|i| i.cap_bounding = 1)),
            ("securebits", Box::new(|i| i.securebits = 1)),
        ];
        for (what, f) in cases {
            let mut img = own(&c);
            f(&mut img);
            assert!(refusal(&c, &img).is_some(), "{what} not refused");
        }
        let mut nnp = c.clone();
        nnp.no_new_privs = true;
        assert!(refusal(&nnp, &own(&c)).is_some());
    }

    #[test]
    fn setpcap_allows_dropping_bounding_caps() {
        let mut c = nobody();
        c.cap_permitted = CAP_SETPCAP;
        let mut img = own(&c);
        img.cap_bounding = 0xff;
        img.securebits = 0x2f;
        assert_eq!(refusal(&c, &img), None);
    }
}
