import Foundation
import ProcessSignals

/// A record of what a long operation did and when: printed live for the operator and kept for the
/// incident record.
public final class Timeline {
    /// One step.
    public struct Step: Codable, Sendable {
        public var at: Date
        public var step: String
        public var seconds: Double?
        public var outcome: String
    }

    public private(set) var steps: [Step] = []
    private let observer: ((Step) -> Void)?
    public let startedAt = Date()

    /// - Parameter observer: called as each step ends (commands print it).
    public init(observer: ((Step) -> Void)? = nil) {
        self.observer = observer
    }

    /// Records a step that just happened.
    public func note(_ step: String, outcome: String = "done") {
        let entry = Step(at: Date(), step: step, seconds: nil, outcome: outcome)
        steps.append(entry)
        observer?(entry)
    }

    /// Runs `body` as a named step, recording its duration and whether it failed.
    @discardableResult
    public func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
        try Interruption.check()   // an interrupted run starts no new step
        let start = Date()
        do {
            let value = try body()
            record(name, start: start, outcome: "done")
            return value
        } catch {
            record(name, start: start, outcome: "failed: \(RecoveryError.classify(error).message)")
            throw error
        }
    }

    private func record(_ name: String, start: Date, outcome: String) {
        let entry = Step(at: start, step: name, seconds: (Date().timeIntervalSince(start) * 1000).rounded() / 1000, outcome: outcome)
        steps.append(entry)
        observer?(entry)
    }
}
