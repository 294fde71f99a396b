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

/// The executions a run's log shows, in the order they first appear. Marks may follow a
/// prefix (Terraform writes `terraform_data.chaos (local-exec): ` before each line); the
/// script's own text (Terraform echoes the command it executes) names `$n`, not a nonce,
/// and is ignored.
pub fn logged_executions(log: &str) -> Vec<LoggedExecution> {
    let mut found: Vec<LoggedExecution> = Vec::new();
    for line in log.lines() {
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
