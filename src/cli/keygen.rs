//! `ciwatch keygen`: write an ECDSA P-256 keypair for `--signing-key` and `verify --key`.

use std::path::PathBuf;

use crate::attest::keys::{self, KeyError};
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Directory for ciwatch.key (PKCS#8 PEM, mode 0600) and ciwatch.pub (SPKI PEM).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// Overwrite an existing keypair.
    #[arg(long)]
    pub force: bool,
}

pub async fn execute(args: KeygenArgs) -> u8 {
    match keys::generate(&args.out_dir, args.force) {
        Ok(g) => {
            println!("private key: {} (keep it secret)", g.private_path.display());
            println!("public key:  {}", g.public_path.display());
            println!("key id:      {}", g.key_id);
            0
        }
        Err(e) => {
            let code = match e {
                KeyError::Exists { .. } => exit::USAGE,
                _ => exit::WRITE,
            };
            super::fail(code, &e)
        }
    }
}
