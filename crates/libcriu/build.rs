//! The library answers to the name programs dlopen: libcriu.so.2.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcriu.so.2");
}
