//! A machine config as a node receives it (kernel command line, fw_cfg, STATE): any bytes either
//! decode into a config that validates, or give errors each naming a problem, never a panic.
//! A config that is accepted survives its own YAML round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strake_machineconfig::MachineConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match MachineConfig::parse(text) {
        Ok(cfg) => {
            assert!(cfg.validate().is_empty(), "parse accepted an invalid config");
            let yaml = cfg.to_yaml().expect("an accepted config writes out");
            let again = MachineConfig::parse(&yaml).expect("its own YAML reads back");
            assert_eq!(again, cfg, "the YAML round trip changed the config");
        }
        Err(e) => assert!(!e.errors.is_empty(), "an error without a problem"),
    }
});
