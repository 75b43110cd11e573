import RecoveryCommands

BackupCommand.runAsTool()
