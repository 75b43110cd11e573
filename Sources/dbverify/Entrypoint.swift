import RecoveryCommands

VerifyCommand.runAsTool()
