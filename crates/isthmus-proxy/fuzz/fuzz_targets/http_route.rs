#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    isthmus_proxy::fuzz_logic::http_route(data);
});
