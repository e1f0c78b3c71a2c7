pub async fn run(_: &crate::Options) {}
pub fn report(_: &crate::Options, _: &()) -> String {
    String::new()
}
