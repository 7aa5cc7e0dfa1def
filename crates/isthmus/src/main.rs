//! The `isthmus` command line.
fn main() {
    println!("isthmus");
}
