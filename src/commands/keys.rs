//! `cognomega keys rotate|list`.

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a new current signing key; the previous one keeps verifying live tokens.
    Rotate,
    /// Print the public keys (the JWKS document).
    List,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    match args.action {
        Action::Rotate => {
            let ring = cognomega_stores::keys::rotate(&db).await?;
            println!(
                "new current key {} ({} previous kept); running servers pick it up on the first token they cannot verify",
                ring.current().kid(),
                ring.previous().len()
            );
        }
        Action::List => {
            let ring = cognomega_stores::keys::load_or_create(&db).await?;
            println!("{}", serde_json::to_string_pretty(&ring.jwks())?);
        }
    }
    db.close().await;
    Ok(())
}
