//! `sd`: the native command-line front end (see DESIGN.md, "Contract: the native CLI").
//!
//! Bad input is a one-line error on stderr and exit code 2.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::process::ExitCode;
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use websd::Error;
    use websd::protocol::SelfTestReport;

    #[derive(Parser)]
    #[command(name = "sd", version, about = "Stable Diffusion on burn (CPU or wgpu)")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Print the wgpu adapter, its shader-f16 support and limits as JSON.
        GpuInfo,
        /// Run the conv + group norm + attention probe on the wgpu device and on the CPU and compare.
        SelfTest,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::GpuInfo => websd::gpu::wgpu_device().map(|(_, info)| json(&info)),
            Command::SelfTest => self_test().map(|report| json(&report)),
        };
        match result {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sd: {err}");
                ExitCode::from(2)
            }
        }
    }

    fn json(value: &impl serde::Serialize) -> String {
        serde_json::to_string_pretty(value).expect("serialisable")
    }

    fn self_test() -> Result<SelfTestReport, Error> {
        let (gpu, _) = websd::gpu::wgpu_device()?;
        let start = Instant::now();
        pollster::block_on(websd::probe::self_test(&gpu, || start.elapsed().as_secs_f64() * 1e3))
    }
}
