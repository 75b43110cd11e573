import Foundation

/// A word as a shell reads it back, for the commands messages and hints suggest: as it is when it
/// holds only characters no shell treats specially, else in single quotes (`'x; rm -rf ~'`), so that a
/// name copied from a hint is the name, never a second command.
public enum ShellWord {
    public static func quoted(_ word: String) -> String {
        let plain = !word.isEmpty && word.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || "-_./:=@%+,".unicodeScalars.contains(scalar))
        }
        return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
