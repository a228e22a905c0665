//! The CLI's side of a running daemon: finds it by its API socket
//! (`DIR/api.sock`), sends it the parsed command, follows the command's job
//! if it runs as one, and prints what the daemon's run printed.

use crate::args::{Command, Format, MetaCmd, PoolCmd};
use crate::commands;
use crate::error::{CliError, Result};
use crate::output::Sink;
use crate::progress::Bar;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vdisk_engine::{ErrorKind, Progress};
use vdisk_server::api::types::{CommandReply, CommandRequest, JobInfo, JobState};
use vdisk_server::api::{Client, Submitted};

/// The daemon serving `dir`, if one runs: `None` when there is no API
/// socket or nothing answers on it (a stale socket: the directory is then
/// opened directly, as without a daemon).
pub fn find_daemon(dir: &Path) -> Result<Option<Client>> {
    let sock = dir.join("api.sock");
    if let Err(e) = std::fs::symlink_metadata(&sock) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(None);
        }
    }
    match Client::connect(&sock) {
        Ok(c) => Ok(Some(c)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(CliError::new(
            ErrorKind::Busy,
            format!(
                "data directory {} is served by a daemon whose API socket {} refuses this user: {e}",
                dir.display(),
                sock.display()
            ),
        )
        .with_hint("run vdisk as the daemon's user (or root): the API socket is private (mode 0600)")),
        Err(e) => Err(CliError::new(
            ErrorKind::Io,
            format!("cannot reach the daemon on {}: {e}", sock.display()),
        )),
    }
}

/// Sends `command` to the daemon and prints its outcome; returns the exit
/// code.
pub fn run(client: &Client, format: Format, no_progress: bool, mut command: Command) -> Result<u8> {
    let no_wait = matches!(&command, Command::Flatten(a) if a.no_wait);
    absolutize(&mut command)?;
    let stdin = match &command {
        Command::Meta(MetaCmd::Restore { file, .. }) if file == "-" => {
            Some(commands::read_stdin_text()?)
        }
        _ => None,
    };
    let req = CommandRequest {
        command: serde_json::to_value(&command).map_err(|e| {
            CliError::invalid(format!("cannot send the command to the daemon: {e}"))
        })?,
        format: match format {
            Format::Plain => "plain",
            Format::Json => "json",
        }
        .into(),
        stdin,
        // Jobs are followed here, with progress.
        wait: false,
    };
    match client.command(&req)? {
        Submitted::Done(reply) => print_reply(&reply),
        Submitted::Job(job) if no_wait => {
            let text = match format {
                Format::Plain => format!("{}\n", job.id),
                Format::Json => crate::output::to_json(&*job)? + "\n",
            };
            print_reply(&CommandReply {
                stdout: text,
                ..CommandReply::default()
            })
        }
        Submitted::Job(job) => {
            let reply = follow(client, *job, no_progress)?;
            print_reply(&reply)
        }
    }
}

/// Paths are the client's: the daemon gets them absolute.
fn absolutize(command: &mut Command) -> Result<()> {
    fn abs(p: &str) -> Result<String> {
        if p == "-" {
            return Ok(p.to_owned());
        }
        let path = std::path::absolute(p).map_err(|e| CliError::io(p, e))?;
        path.into_os_string()
            .into_string()
            .map_err(|_| CliError::invalid(format!("{p:?} is not a UTF-8 path")))
    }
    match command {
        Command::Import(a) if !vdisk_convert::NbdUri::looks_like(&a.file) => a.file = abs(&a.file)?,
        Command::Export(a) if !vdisk_convert::NbdUri::looks_like(&a.file) => a.file = abs(&a.file)?,
        Command::ExportDiff(a) => a.file = abs(&a.file)?,
        Command::ImportDiff(a) => a.file = abs(&a.file)?,
        Command::MergeDiff(a) => {
            a.first = abs(&a.first)?;
            a.second = abs(&a.second)?;
            a.out = abs(&a.out)?;
        }
        Command::Convert(a) => {
            for p in [&mut a.src, &mut a.dst] {
                if commands::is_file_source(p) {
                    *p = abs(p)?
                }
            }
        }
        Command::Compare(a) => {
            for p in [&mut a.a, &mut a.b] {
                if commands::is_file_source(p) {
                    *p = abs(p)?
                }
            }
        }
        Command::Map(a) if commands::is_file_source(&a.src) => a.src = abs(&a.src)?,
        Command::Gpt(a) if commands::is_file_source(&a.src) => {
            a.shown_as = Some(a.src.clone());
            a.src = abs(&a.src)?
        }
        Command::Meta(MetaCmd::Backup { file, .. } | MetaCmd::Restore { file, .. }) => {
            *file = abs(file)?
        }
        Command::Pool(PoolCmd::Create { path: Some(p), .. }) => {
            *p = PathBuf::from(abs(&p.to_string_lossy())?)
        }
        _ => {}
    }
    Ok(())
}

/// Polls the job until it is finished; shows its progress meanwhile. The
/// job's end is the daemon's word, checked: `done` only with its
/// command's successful reply, and a job the daemon no longer knows is an
/// error, never a success.
fn follow(client: &Client, mut job: JobInfo, no_progress: bool) -> Result<CommandReply> {
    let bar = Bar::new(no_progress);
    let (mut phase, mut shown) = (String::new(), 0u64);
    let mut delay = Duration::from_millis(20);
    let id = job.id;
    loop {
        if !job.phase.is_empty() && job.phase != phase {
            bar.start(&job.phase, job.total);
            phase = job.phase.clone();
            shown = 0;
        }
        if job.done > shown {
            bar.inc(job.done - shown);
            shown = job.done;
        }
        if job.state.is_finished() {
            bar.finish();
            let reply = job.result.ok_or_else(|| {
                CliError::new(
                    ErrorKind::Io,
                    format!("job {id} ended {} without a result", job.state.name()),
                )
            })?;
            let succeeded = reply.exit_code == 0 && reply.error.is_none();
            return match (job.state, succeeded) {
                (JobState::Done, true) | (JobState::Failed, false) => Ok(reply),
                // Contradictions are failures, never successes.
                (JobState::Done, false) => Ok(reply),
                _ => Err(CliError::new(
                    ErrorKind::Io,
                    format!("job {id} failed although its command reported success"),
                )),
            };
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
        job = client.job(id)?.ok_or_else(|| {
            CliError::new(
                ErrorKind::Io,
                format!("the daemon no longer knows job {id}: its outcome is unknown"),
            )
            .with_hint("`vdisk status` lists the jobs; `vdisk info SPEC` shows the image's state")
        })?;
    }
}

/// Prints what the daemon's run printed; returns its exit code.
fn print_reply(reply: &CommandReply) -> Result<u8> {
    if let Err(e) = Sink::Stdout.write(reply.stdout.as_bytes()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(0);
        }
        return Err(CliError::io("writing standard output", e));
    }
    let _ = Sink::Stderr.write(reply.stderr.as_bytes());
    Ok(reply.exit_code)
}
