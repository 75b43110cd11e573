import BackupStorage
import Foundation
import ProcessSignals

/// Streaming over stored objects in bounded chunks.
public enum ObjectStreaming {
    /// Calls `body` with each chunk of the object until its end.
    public static func forEachChunk(of reader: ObjectReader, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: PipeReader.chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            try Interruption.check()
            let count = try reader.read(into: buffer)
            if count == 0 { return }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}
