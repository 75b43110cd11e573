import RecoveryCommands

RestoreCommand.runAsTool()
