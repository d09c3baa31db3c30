//! The torch-compatible generator against every random tensor diffusers drew in the fixture runs.

use crate::common;

use websd::rng::TorchRng;

#[test]
fn every_recorded_random_tensor_is_reproduced_bit_for_bit() {
    let mut checked = 0;
    for name in common::run_names() {
        let run = common::Run::load(&name);
        let seed: u64 = run.meta("seed").expect("seed in metadata").parse().unwrap();
        // One generator per run: the draws happened in this order on it.
        let mut rng = TorchRng::new(seed);
        let draws = run.names_with_prefix("randn_");
        assert!(!draws.is_empty(), "{name} has random draws");
        for draw in draws {
            let (_, expected) = run.f32(&draw);
            let actual = rng.randn(expected.len());
            let mismatches = actual.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(mismatches, 0, "{name}/{draw}: {mismatches} of {} values differ", expected.len());
            checked += expected.len();
        }
    }
    eprintln!("{checked} recorded random values reproduced exactly");
    assert!(checked >= 17 * 4096);
}
