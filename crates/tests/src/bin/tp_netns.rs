//! Network namespace test program (placeholder until the netns kind).
fn main() {}
