import Foundation
import ProcessSignals
import RecoveryKit

/// The one confirmation step of destructive commands (restore, prune, migrate down): a prompt at a
/// terminal, a refusal without one.
enum Confirmation {
    /// Shows `plan` and asks `Proceed? [y/N]` when stdin is a terminal.
    ///
    /// - Parameters:
    ///   - plan: what will be done, shown before the question.
    ///   - refusal: what the command would do, for the message when it cannot ask.
    ///   - required: whether going ahead without a terminal needs `--yes` (false for a plan that
    ///     destroys nothing, such as `dbmigrate up`: asked at a terminal, run as it is in a pipeline).
    /// - Throws: `RecoveryError(.usage)` naming `--yes` when stdin is not a terminal;
    ///   `RecoveryError(.declined)` when the answer is not yes.
    static func ask(_ plan: String, refusal: String, required: Bool = true) throws {
        guard isatty(0) == 1 else {
            guard required else { return }
            throw RecoveryError(.usage, "\(refusal), but stdin is not a terminal to confirm it; nothing was changed",
                                hint: "add --yes to confirm in scripts and cron (--dry-run shows the plan first)")
        }
        TextSink.standardError.write(plan + "\nProceed? [y/N] ")
        guard let answer = Interruption.atPrompt({ readLine() }), ["y", "yes"].contains(answer.lowercased()) else {
            throw RecoveryError(.declined, "cancelled at the prompt; nothing was changed")
        }
    }
}
