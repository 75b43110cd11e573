import RecoveryCommands

MigrateCommand.runAsTool()
