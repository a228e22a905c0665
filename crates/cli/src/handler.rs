//! The daemon's side of `POST /v1/commands`: runs the commands of this
//! binary on the daemon's store (the store the NBD connections use),
//! capturing what they print, so a command prints the same and exits the
//! same through the daemon as without one.

use crate::args::{Command, Format, SnapCmd};
use crate::commands::{self, Ctx, Daemon};
use vdisk_engine::{ErrorKind, ImageSpec};
use vdisk_server::api::types::{CommandReply, CommandRequest};
use vdisk_server::api::{CommandEnv, CommandHandler, JobSpec, Prepared};

/// Runs CLI commands for the API.
#[derive(Debug)]
pub struct Handler;

impl CommandHandler for Handler {
    fn prepare(&self, req: CommandRequest) -> Result<Prepared, Box<CommandReply>> {
        let format = match req.format.as_str() {
            "plain" => Format::Plain,
            "json" => Format::Json,
            other => {
                return Err(Box::new(CommandReply::failure(
                    ErrorKind::InvalidInput,
                    &format!("unknown output format {other:?}"),
                    Some("\"format\" is \"plain\" or \"json\""),
                )))
            }
        };
        let command: Command = serde_json::from_value(req.command).map_err(|e| {
            Box::new(CommandReply::failure(
                ErrorKind::InvalidInput,
                &format!("invalid command: {e}"),
                Some("a command is one of the CLI's, as JSON, e.g. {\"snap\": {\"create\": {\"spec\": \"rbd/vm1@s1\"}}} (docs/CLI.md, Management API)"),
            ))
        })?;
        let job = job_of(&command);
        let stdin = req.stdin;
        Ok(Prepared {
            job,
            run: Box::new(move |env| execute(env, format, command, stdin)),
        })
    }
}

/// Runs `command` as the CLI would, into buffers.
fn execute(
    env: CommandEnv,
    format: Format,
    command: Command,
    stdin: Option<String>,
) -> CommandReply {
    let job = env.job;
    let ctx = Ctx::in_daemon(
        env.store,
        format,
        env.progress,
        Daemon {
            registry: env.registry,
            stdin,
        },
    );
    // No `flush_all` here, unlike a CLI process: commands flush the images
    // they write themselves, and the served images are their clients' to
    // flush.
    let (code, error) = match commands::dispatch(&ctx, command) {
        Ok(()) => (0, None),
        Err(e) => {
            let _ = ctx.err.write(e.render().as_bytes());
            (e.exit_code(), Some(e.body()))
        }
    };
    CommandReply {
        exit_code: code,
        stdout: ctx.out.sink.take_string(),
        stderr: ctx.err.take_string(),
        error,
        job,
    }
}

/// Long work runs as a job (visible in `status` with its progress): its
/// kind and what it works on. Commands whose arguments do not parse run
/// inline and fail at once.
pub fn job_of(c: &Command) -> Option<JobSpec> {
    let image = |s: &str| ImageSpec::parse(s).ok().map(|s| s.image_only().to_string());
    let any = |s: &str| ImageSpec::parse(s).ok().map(|s| s.to_string());
    let (kind, spec) = match c {
        Command::Flatten(a) => ("flatten", image(&a.spec)?),
        Command::Cp(a) => ("cp", image(&a.dst)?),
        Command::Import(a) if a.file != "-" => (
            "import",
            match &a.spec {
                Some(s) => image(s)?,
                None => commands::default_import_spec(&a.file).ok()?.to_string(),
            },
        ),
        Command::Export(a) if a.file != "-" => ("export", any(&a.spec)?),
        Command::ExportDiff(a) if a.file != "-" => ("export-diff", any(&a.spec)?),
        Command::ImportDiff(a) if a.file != "-" => ("import-diff", image(&a.spec)?),
        Command::Snap(SnapCmd::Rm(a)) => ("snap rm", any(&a.spec)?),
        Command::Snap(SnapCmd::Purge(a)) => ("snap purge", image(&a.spec)?),
        Command::Snap(SnapCmd::Rollback(a)) => ("snap rollback", any(&a.spec)?),
        _ => return None,
    };
    Some(JobSpec {
        kind: kind.into(),
        spec,
    })
}
