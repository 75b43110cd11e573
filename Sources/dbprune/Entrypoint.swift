import RecoveryCommands

PruneCommand.runAsTool()
