//! `gantry stack create|list|show|unfence|depend|undepend|dependencies|state|secrets|move`: stacks,
//! the source and settings that runs execute (`state`: `stack_state.rs`; `secrets` and
//! `move`: `stack_secrets.rs`).

use clap::{Args, Subcommand, ValueEnum};
use gantry_domain::Tool;
use gantry_proto::api::{
    AddDependency, CreateStack, Dependencies, EnvironmentVariable, OutputReference, Run, Stack,
};
use serde::Serialize;

use super::stack_schedule::{self, ScheduleCommand};
use super::stack_secrets::{self, MoveArgs, SecretsCommand};
use super::stack_state::{self, StateCommand};
use super::{Context, Outcome};
use crate::output::{self, print_json};

/// The server's own pool, where a stack that names none runs.
const SHARED_POOL: &str = "shared";

/// How many runs `stack show` lists.
const LATEST_RUNS: u32 = 10;

const CREATE_AFTER_HELP: &str = "\
Secret variables (--secret-env) are sealed here to the pool's certificate before they
are sent: the server keeps them sealed, only the pool's launchers open them, and they
mask them in logs. Runs execute on the stack's pool, in the runner image
(or the pool's default), from the head of the branch unless a commit is given.

Examples:
  gantry stack create --name network --repository https://git.example.com/infra.git \\
      --pool build --project-root network --env TF_VAR_region=eu-west-1
  gantry stack create --name web --repository file:///srv/git/web.git --pool build \\
      --tool opentofu --autodeploy --secret-env TF_VAR_db_password=hunter2";

const UNFENCE_AFTER_HELP: &str = "\
A stack is fenced when the run holding its lock failed while its worker may still be
executing it: its launcher stopped heart-beating, or the run was failed under it. The
server keeps the lock until that worker's lease has surely run out (gantry stack show
says until when). Lift the fence only when you know the worker stopped (its machine is
off, its container or Pod gone): otherwise two runs may write the stack's state at once.

Example:
  gantry stack unfence network";

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Create a stack
    #[command(after_help = CREATE_AFTER_HELP)]
    Create(Box<CreateArgs>),
    /// List stacks
    List,
    /// Show a stack and its latest runs
    #[command(after_help = "Example:\n  gantry stack show network")]
    Show {
        /// Stack name or id
        stack: String,
    },
    /// Lift a stack's lock fence: its next tracked run or task may start at once (admin only)
    #[command(after_help = UNFENCE_AFTER_HELP)]
    Unfence {
        /// Stack name or id
        stack: String,
    },
    /// Make a stack depend on another: its tracked runs wait for the upstream stack's,
    /// and it is triggered when a referenced upstream output changes
    #[command(after_help = DEPEND_AFTER_HELP)]
    Depend(DependArgs),
    /// Remove a dependency
    Undepend {
        /// The dependent stack (name or id)
        stack: String,
        /// The stack it no longer depends on
        #[arg(long = "on", value_name = "UPSTREAM")]
        upstream: String,
    },
    /// What a stack depends on, and what depends on it
    Dependencies {
        /// Stack name or id
        stack: String,
    },
    /// The versions of a stack's managed state: list them, roll back to one
    #[command(subcommand)]
    State(StateCommand),
    /// A stack's secret variables: give them again, or reseal them with the old pool key
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Cron schedules that trigger tracked runs, tasks and drift checks
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Run the stack on another pool: its secret values are sealed to the new pool
    Move(MoveArgs),
}

const DEPEND_AFTER_HELP: &str = "\
An upstream tracked run that finishes triggers the dependent stack when an output it
references changed (or after every run, with --trigger-always, or when it references
none). A dependent tracked run waits while an upstream stack has one unfinished, and is
SKIPPED when that one fails. Cycles are refused.

Examples:
  gantry stack depend app --on network --reference vpc_id=TF_VAR_vpc_id
  gantry stack depend app --on network --reference subnets=TF_VAR_subnets --trigger-always";

#[derive(Debug, Args)]
pub struct DependArgs {
    /// The dependent stack (name or id)
    pub stack: String,
    /// The stack it depends on
    #[arg(long = "on", value_name = "UPSTREAM")]
    pub upstream: String,
    /// An upstream output and the environment variable that receives it (repeatable)
    #[arg(long = "reference", value_name = "OUTPUT=VARIABLE", value_parser = parse_reference)]
    pub outputs: Vec<(String, String)>,
    /// Trigger the dependent stack after every upstream tracked run, changed or not
    #[arg(long)]
    pub trigger_always: bool,
}

fn parse_reference(text: &str) -> Result<(String, String), String> {
    let (output, variable) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected OUTPUT=VARIABLE"))?;
    if output.is_empty() {
        return Err(format!("{text:?}: the output name is missing"));
    }
    // The variable follows the same rule as --env names.
    parse_variable(&format!("{variable}=")).map(|(variable, _)| (output.to_owned(), variable))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ToolArg {
    Terraform,
    Opentofu,
}

impl From<ToolArg> for Tool {
    fn from(tool: ToolArg) -> Self {
        match tool {
            ToolArg::Terraform => Tool::Terraform,
            ToolArg::Opentofu => Tool::OpenTofu,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Stack name: lowercase letters, digits, '-' and '_'
    #[arg(long, value_parser = parse_stack_name)]
    pub name: String,
    /// Git URL the pool's launchers can clone (https://, ssh://, file://)
    #[arg(long, value_name = "URL")]
    pub repository: String,
    /// Pool (name or id) whose workers run this stack [default: the server's shared pool]
    #[arg(long)]
    pub pool: Option<String>,
    /// Branch whose head runs use unless given a commit
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Directory of the configuration inside the repository
    #[arg(long, value_name = "DIR", default_value = "")]
    pub project_root: String,
    /// The tool runs execute [default: terraform]
    #[arg(long, value_enum)]
    pub tool: Option<ToolArg>,
    /// Container image the runs execute in [default: the pool's]
    #[arg(long, value_name = "IMAGE")]
    pub runner_image: Option<String>,
    /// Apply plans that have changes without waiting for a confirmation
    #[arg(long)]
    pub autodeploy: bool,
    /// Let Gantry keep the stack's Terraform state, encrypted to the pool key (the
    /// configuration's backend is replaced by a local one)
    #[arg(long)]
    pub managed_state: bool,
    /// Let the stack's sensitive outputs reach the stacks that depend on it, sealed to
    /// the pool key; its launchers must set GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED=true
    #[arg(long)]
    pub share_sensitive_outputs: bool,
    /// An environment variable of the runs (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_variable)]
    pub env: Vec<(String, String)>,
    /// A secret environment variable: write-only, masked in logs (repeatable)
    #[arg(long = "secret-env", value_name = "NAME=VALUE", value_parser = parse_variable)]
    pub secret_env: Vec<(String, String)>,
    /// A label (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A description, shown by stack show
    #[arg(long, default_value = "")]
    pub description: String,
    /// A glob of repository paths outside the project root whose pushes trigger the
    /// stack too, e.g. 'modules/**' or 'shared/*.tf' (repeatable; webhooks)
    #[arg(long = "trigger-path", value_name = "GLOB")]
    pub trigger_paths: Vec<String>,
}

fn parse_stack_name(value: &str) -> Result<String, String> {
    gantry_domain::validate_name("stack", value)
        .map(|()| value.to_owned())
        .map_err(|e| e.to_string())
}

/// `NAME=VALUE`, where NAME is a shell variable name and VALUE may contain `=`.
pub(super) fn parse_variable(text: &str) -> Result<(String, String), String> {
    let (name, value) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a variable name: expected letters, digits and '_', not starting with a digit"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

impl CreateArgs {
    /// The request, with the secret variables already sealed (`stack_secrets::seal_all`).
    fn request(&self, sealed: Vec<EnvironmentVariable>) -> CreateStack {
        let plain = self.env.iter().map(|(name, value)| EnvironmentVariable {
            name: name.clone(),
            value: Some(value.clone()),
            secret: false,
            sealed_value: None,
        });
        CreateStack {
            name: self.name.clone(),
            repository: self.repository.clone(),
            branch: self.branch.clone(),
            project_root: self.project_root.clone(),
            pool: self.pool.clone(),
            tool: self.tool.map(Tool::from),
            runner_image: self.runner_image.clone(),
            autodeploy: self.autodeploy,
            managed_state: self.managed_state,
            share_sensitive_outputs: self.share_sensitive_outputs,
            environment: plain.chain(sealed).collect(),
            description: self.description.clone(),
            trigger_paths: self.trigger_paths.clone(),
            labels: self.labels.clone(),
        }
    }
}

pub async fn run(context: &Context, command: &StackCommand) -> anyhow::Result<Outcome> {
    match command {
        StackCommand::Create(args) => create(context, args).await,
        StackCommand::List => list(context).await,
        StackCommand::Show { stack } => show(context, stack).await,
        StackCommand::Unfence { stack } => unfence(context, stack).await,
        StackCommand::Depend(args) => depend(context, args).await,
        StackCommand::Undepend { stack, upstream } => {
            let client = context.api_client()?;
            let dependencies = client.remove_dependency(stack, upstream).await?;
            print_dependencies(context, stack, &dependencies)
        }
        StackCommand::Dependencies { stack } => {
            let client = context.api_client()?;
            let dependencies = client.stack_dependencies(stack).await?;
            print_dependencies(context, stack, &dependencies)
        }
        StackCommand::State(command) => stack_state::run(context, command).await,
        StackCommand::Secrets(command) => stack_secrets::run(context, command).await,
        StackCommand::Schedule(command) => stack_schedule::run(context, command).await,
        StackCommand::Move(args) => stack_secrets::move_stack(context, args).await,
    }
}

async fn depend(context: &Context, args: &DependArgs) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let request = AddDependency {
        upstream: args.upstream.clone(),
        references: args
            .outputs
            .iter()
            .map(|(output, variable)| OutputReference {
                output: output.clone(),
                variable: variable.clone(),
                trigger_always: args.trigger_always,
            })
            .collect(),
    };
    let dependencies = client.add_dependency(&args.stack, &request).await?;
    print_dependencies(context, &args.stack, &dependencies)
}

fn print_dependencies(
    context: &Context,
    stack: &str,
    dependencies: &Dependencies,
) -> anyhow::Result<Outcome> {
    if context.is_json() {
        print_json(dependencies)?;
    } else {
        print!("{}", output::dependencies_text(stack, dependencies));
    }
    Ok(Outcome::Success)
}

async fn create(context: &Context, args: &CreateArgs) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let pool = args.pool.as_deref().unwrap_or(SHARED_POOL);
    let sealed =
        stack_secrets::seal_all(context, &client, pool, &args.name, &args.secret_env).await?;
    let stack = client.create_stack(&args.request(sealed)).await?;
    if context.is_json() {
        print_json(&stack)?;
    } else {
        println!("Created stack {} ({}).\n", stack.name, stack.id);
        print!("{}", output::stack_details(&stack, &[], output::now()));
        println!("\nTrigger a run with: gantry run trigger {} --follow", stack.name);
    }
    Ok(Outcome::Success)
}

async fn list(context: &Context) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let stacks = client.list_stacks().await?;
    if context.is_json() {
        print_json(&stacks)?;
    } else {
        print!("{}", output::stacks_table(&stacks.stacks, output::now()));
    }
    Ok(Outcome::Success)
}

async fn unfence(context: &Context, stack: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let stack = client.unfence_stack(stack).await?;
    if context.is_json() {
        print_json(&stack)?;
    } else {
        println!("Lifted the lock fence of stack {}: its next run may start.", stack.name);
    }
    Ok(Outcome::Success)
}

async fn show(context: &Context, stack: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let stack = client.get_stack(stack).await?;
    let runs = client.list_runs(Some(&stack.id.to_string()), Some(LATEST_RUNS)).await?;
    if context.is_json() {
        #[derive(Serialize)]
        struct StackWithRuns<'a> {
            stack: &'a Stack,
            runs: &'a [Run],
        }
        print_json(&StackWithRuns { stack: &stack, runs: &runs.runs })?;
    } else {
        print!("{}", output::stack_details(&stack, &runs.runs, output::now()));
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn variables_split_at_the_first_equals_sign() {
        assert_eq!(parse_variable("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert_eq!(parse_variable("_X="), Ok(("_X".to_owned(), String::new())));
        assert_eq!(parse_variable("novalue"), Err("\"novalue\": expected NAME=VALUE".to_owned()));
        assert!(parse_variable("1A=x").is_err());
        assert!(parse_variable("A-B=x").is_err());
    }

    #[test]
    fn the_command_line_becomes_the_request() {
        let cli = Cli::try_parse_from([
            "gantry",
            "stack",
            "create",
            "--name",
            "web",
            "--repository",
            "file:///srv/web.git",
            "--pool",
            "build",
            "--tool",
            "opentofu",
            "--env",
            "A=1",
            "--secret-env",
            "S=2",
            "--label",
            "x",
            "--autodeploy",
            "--managed-state",
            "--share-sensitive-outputs",
            "--trigger-path",
            "modules/**",
        ])
        .unwrap();
        let Command::Stack(StackCommand::Create(args)) = cli.command else { panic!() };
        let sealed = EnvironmentVariable {
            name: "S".to_owned(),
            value: None,
            secret: true,
            sealed_value: Some("R05UUllTRUM=".to_owned()),
        };
        let request = serde_json::to_value(args.request(vec![sealed])).unwrap();
        assert_eq!(
            request,
            serde_json::json!({
                "name": "web", "repository": "file:///srv/web.git", "branch": "main",
                "project_root": "", "pool": "build", "tool": "opentofu", "runner_image": null,
                "autodeploy": true,
                "managed_state": true,
                "share_sensitive_outputs": true,
                "environment": [
                    {"name": "A", "value": "1", "secret": false},
                    {"name": "S", "secret": true, "sealed_value": "R05UUllTRUM="}
                ],
                "description": "", "labels": ["x"], "trigger_paths": ["modules/**"]
            })
        );
    }
}
