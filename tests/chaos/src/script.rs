//! The shell script every chaos run executes (a task's command, a tracked run's
//! `local-exec` provisioner) and the marks it prints, read back from a run's log.
//!
//! Each execution draws a nonce of its own, so that the log and the journal can be joined
//! without the run knowing its id (no variable carries it), and a run executed twice
//! shows two nonces.

/// The first line an execution prints: `chaos-begin <nonce> <lines>`.
pub const BEGIN: &str = "chaos-begin";
/// Each numbered line: `chaos-line <nonce> <n>`, n from 1.
pub const LINE: &str = "chaos-line";
/// The last line: `chaos-end <nonce>`.
pub const END: &str = "chaos-end";

/// A POSIX shell script (busybox's `sh` in a container, the host's elsewhere) that prints
/// `lines` numbered lines, `pause` seconds apart (a `sleep` argument), and journals its
/// start, every line and its end to `journal`, an absolute path without spaces that is
/// the same on the host and in run containers. One `echo >>` is one `write` on a file
/// opened with `O_APPEND`, so journal lines never tear or interleave, and their order in
/// the file is the order they were written in.
pub fn run_script(journal: &str, lines: u32, pause: &str) -> String {
    format!(
        "n=$(cut -c1-8 /proc/sys/kernel/random/uuid); j={journal}; echo \"{BEGIN} $n {lines}\"; \
         read u r < /proc/uptime; echo \"$n start $u\" >> $j; i=1; \
         while [ $i -le {lines} ]; do echo \"{LINE} $n $i\"; read u r < /proc/uptime; \
         echo \"$n tick $u\" >> $j; sleep {pause}; i=$((i+1)); done; \
         read u r < /proc/uptime; echo \"$n end $u\" >> $j; echo \"{END} $n\""
    )
}

/// What one execution printed, as found in a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedExecution {
    pub nonce: String,
    /// The line count its begin mark announced, when the begin mark is in the log.
    pub announced_lines: Option<u32>,
    /// The numbers of its numbered lines, in log order (duplicates kept).
    pub numbers: Vec<u32>,
    pub ended: bool,
}

/// The first character of every line of a Terraform diagnostic's box, as a run's log
/// shows it (Gantry runs Terraform with colours; read with `--color never`, the box stays).
const DIAGNOSTIC_MARGIN: char = '│';

/// The executions a run's log shows, in the order they first appear. Marks may follow a
/// prefix (Terraform writes `terraform_data.chaos (local-exec): ` before each line); the
/// script's own text (Terraform echoes the command it executes) names `$n`, not a nonce,
/// and is ignored. So are Terraform's diagnostics: a failed or interrupted `local-exec`
/// provisioner's error quotes everything the command printed ("… signal: killed. Output:
/// chaos-begin …"), which is not a second delivery of those lines.
pub fn logged_executions(log: &str) -> Vec<LoggedExecution> {
    let mut found: Vec<LoggedExecution> = Vec::new();
    for line in log.lines().filter(|line| !line.trim_start().starts_with(DIAGNOSTIC_MARGIN)) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (at, word) in words.iter().enumerate() {
            if ![BEGIN, LINE, END].contains(word) {
                continue;
            }
            let Some(nonce) = words.get(at + 1).filter(|nonce| is_nonce(nonce)) else {
                continue;
            };
            let number = words.get(at + 2).and_then(|number| number.parse::<u32>().ok());
            if *word == LINE && number.is_none() {
                continue;
            }
            let index = match found.iter().position(|execution| execution.nonce == *nonce) {
                Some(index) => index,
                None => {
                    found.push(LoggedExecution {
                        nonce: (*nonce).to_owned(),
                        announced_lines: None,
                        numbers: Vec::new(),
                        ended: false,
                    });
                    found.len() - 1
                }
            };
            let execution = &mut found[index];
            match *word {
                BEGIN => execution.announced_lines = number,
                LINE => execution.numbers.extend(number),
                _ => execution.ended = true,
            }
        }
    }
    found
}

/// Eight lowercase hexadecimal digits: the head of a kernel UUID.
pub fn is_nonce(word: &str) -> bool {
    word.len() == 8 && word.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_read_through_terraforms_prefix_and_the_echoed_script_is_ignored() {
        let script = run_script("/j/s.journal", 3, "0");
        let log = format!(
            "terraform_data.chaos: Provisioning with 'local-exec'...\n\
             terraform_data.chaos (local-exec): Executing: [\"/bin/sh\" \"-c\" \"{script}\"]\n\
             terraform_data.chaos (local-exec): chaos-begin 0a1b2c3d 3\n\
             terraform_data.chaos (local-exec): chaos-line 0a1b2c3d 1\n\
             chaos-line 0a1b2c3d 2\nchaos-line 0a1b2c3d 3\nchaos-end 0a1b2c3d\n"
        );
        assert_eq!(
            logged_executions(&log),
            vec![LoggedExecution {
                nonce: "0a1b2c3d".into(),
                announced_lines: Some(3),
                numbers: vec![1, 2, 3],
                ended: true,
            }]
        );
    }

    #[test]
    fn two_executions_and_duplicates_are_kept_apart() {
        let log = "chaos-begin aaaaaaaa 2\nchaos-line aaaaaaaa 1\nchaos-line aaaaaaaa 1\n\
                   chaos-begin bbbbbbbb 2\nchaos-line bbbbbbbb 2\n";
        let found = logged_executions(log);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].numbers, vec![1, 1]);
        assert!(!found[0].ended);
        assert_eq!(found[1].numbers, vec![2]);
    }

    /// Terraform's own output for a `local-exec` provisioner that fails after printing:
    /// its live lines, then the error diagnostic quoting them.
    fn terraform_apply_of_a_failing_script(script: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let command = serde_json::to_string(&format!("{script}; exit 3")).unwrap();
        std::fs::write(
            dir.path().join("main.tf"),
            format!(
                "resource \"terraform_data\" \"chaos\" {{\n  provisioner \"local-exec\" {{\n    command = {command}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let terraform = |args: &[&str]| {
            std::process::Command::new("terraform")
                .args(args)
                .current_dir(dir.path())
                .env("TF_IN_AUTOMATION", "1")
                .output()
                .expect("terraform is on PATH")
        };
        let init = terraform(&["init", "-input=false"]);
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        let apply = terraform(&["apply", "-auto-approve", "-input=false"]);
        assert!(!apply.status.success(), "the provisioner fails");
        let output = [apply.stdout, apply.stderr].concat();
        without_colours(&String::from_utf8(output).unwrap())
    }

    /// What `gantry run logs --color never` prints of coloured text.
    fn without_colours(text: &str) -> String {
        let mut plain = String::new();
        let mut chars = text.chars();
        while let Some(char) = chars.next() {
            if char == '\u{1b}' {
                // A CSI sequence ends with its first letter.
                chars.by_ref().find(char::is_ascii_alphabetic);
            } else {
                plain.push(char);
            }
        }
        plain
    }

    #[test]
    fn a_failed_provisioners_output_quoted_by_terraforms_diagnostic_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let script = run_script(&dir.path().join("s.journal").display().to_string(), 3, "0");
        let log = terraform_apply_of_a_failing_script(&script);
        let quoted: Vec<&str> = log
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix(DIAGNOSTIC_MARGIN))
            .collect();
        let quoted = logged_executions(&quoted.join("\n"));
        assert!(
            quoted.iter().any(|execution| !execution.numbers.is_empty()),
            "Terraform's diagnostic quotes numbered lines:\n{log}"
        );
        let executions = logged_executions(&log);
        assert_eq!(executions.len(), 1, "{log}");
        assert_eq!(executions[0].numbers, vec![1, 2, 3], "{log}");
        assert!(executions[0].ended);
    }

    #[test]
    fn the_script_runs_and_journals_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("s.journal");
        let output = std::process::Command::new("sh")
            .args(["-c", &run_script(&journal.display().to_string(), 3, "0")])
            .output()
            .expect("sh runs");
        assert!(output.status.success());
        let log = String::from_utf8(output.stdout).unwrap();
        let executions = logged_executions(&log);
        assert_eq!(executions.len(), 1, "{log}");
        assert_eq!(executions[0].numbers, vec![1, 2, 3]);
        assert!(executions[0].ended);
        let entries =
            crate::journal::parse_journal(&std::fs::read_to_string(&journal).unwrap()).unwrap();
        assert_eq!(entries.len(), 5, "start, three ticks, end");
        assert!(entries.iter().all(|entry| entry.nonce == executions[0].nonce));
    }
}
