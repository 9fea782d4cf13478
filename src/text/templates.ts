/**
 * Chat templates as data, one per InternVL2 family (conversation.py of the official code):
 * what wraps the system message and each turn, which end token is learned, and the default
 * system message.
 */
import { UserError } from "../util/errors.ts";

export interface ChatTemplate {
  name: string;
  /** Default system message; null when the template has no system part (plain). */
  systemMessage: string | null;
  /** Text before the system message (starts with a role token), e.g. `<|im_start|>system\n`. */
  systemPrefix: string;
  userPrefix: string;
  assistantPrefix: string;
  /**
   * Closes every part (system, user and assistant); the assistant's is learned.
   * `"<eos>"` means the tokenizer's EOS token.
   */
  turnEnd: string;
  /** Text after turnEnd that is never learned (`\n` for internvl2_5). */
  afterTurnEnd: string;
  /** Strip each turn's text of surrounding whitespace (internlm2-chat's preprocess does). */
  stripTurns: boolean;
  /** Token ids equal to these are never learned (phi3's preprocess masks `<|endoftext|>`). */
  neverLearned: string[];
  /** User turns are closed by turnEnd too (all but plain). */
  endUserTurns: boolean;
  /** An empty message is written as its role prefix alone, without turnEnd (conversation.py's MPT style). */
  emptyTurnsRoleOnly: boolean;
}

const INTERNVL_SYSTEM =
  "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";
const INTERNVL25_SYSTEM =
  "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";

const im = {
  systemPrefix: "<|im_start|>system\n",
  userPrefix: "<|im_start|>user\n",
  assistantPrefix: "<|im_start|>assistant\n",
  turnEnd: "<|im_end|>",
};

export const TEMPLATES: Record<string, ChatTemplate> = {
  "Hermes-2": {
    name: "Hermes-2",
    systemMessage: INTERNVL_SYSTEM,
    ...im,
    afterTurnEnd: "",
    stripTurns: false,
    neverLearned: [],
    endUserTurns: true,
    emptyTurnsRoleOnly: true,
  },
  "internlm2-chat": {
    name: "internlm2-chat",
    systemMessage: INTERNVL_SYSTEM,
    ...im,
    afterTurnEnd: "",
    stripTurns: true,
    neverLearned: [],
    endUserTurns: true,
    emptyTurnsRoleOnly: true,
  },
  "phi3-chat": {
    name: "phi3-chat",
    systemMessage: INTERNVL_SYSTEM,
    systemPrefix: "<|system|>\n",
    userPrefix: "<|user|>\n",
    assistantPrefix: "<|assistant|>\n",
    turnEnd: "<|end|>",
    afterTurnEnd: "",
    stripTurns: false,
    neverLearned: ["<|endoftext|>"],
    endUserTurns: true,
    emptyTurnsRoleOnly: true,
  },
  internvl2_5: {
    name: "internvl2_5",
    systemMessage: INTERNVL25_SYSTEM,
    ...im,
    afterTurnEnd: "\n",
    stripTurns: false,
    neverLearned: [],
    endUserTurns: true,
    emptyTurnsRoleOnly: false,
  },
  /** Pretraining style: no system, no roles: the user text, then the answer and EOS (learned). */
  plain: {
    name: "plain",
    systemMessage: null,
    systemPrefix: "",
    userPrefix: "",
    assistantPrefix: "",
    turnEnd: "<eos>",
    afterTurnEnd: "",
    stripTurns: false,
    neverLearned: [],
    endUserTurns: false,
    emptyTurnsRoleOnly: false,
  },
};

export function getTemplate(name: string): ChatTemplate {
  const t = TEMPLATES[name];
  if (!t)
    throw new UserError(
      `unknown chat template "${name}"; known: ${Object.keys(TEMPLATES).join(", ")}`,
    );
  return t;
}
