//! The generated constants match the installed Slurm (no function is called: they exist only
//! inside Slurm's programs).

use slurm_spank_sys::{
    slurm_err_t, spank_context_e, spank_item, ESPANK_SUCCESS, SLURM_VERSION_NUMBER,
};

#[test]
fn version_and_codes_are_those_of_the_headers() {
    // 22.05 or later: major in the top byte pair, e.g. 0x160508 for 22.05.8.
    const { assert!(SLURM_VERSION_NUMBER >= 0x16_05_00) };
    assert_eq!(ESPANK_SUCCESS, 0);
    assert_eq!(slurm_err_t::ESPANK_ERROR.0, 3000);
    assert_eq!(spank_context_e::S_CTX_JOB_SCRIPT.0, 5);
    assert_eq!(spank_item::S_JOB_ID.0, 2);
}
