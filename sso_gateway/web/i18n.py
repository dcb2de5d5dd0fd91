"""The sign-in pages' words, in French (the default) and English."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Connexion territoriale",
        "service": "Identité territoriale du GHT",
        "skip": "Aller au contenu",
        "signin_heading": "Connectez-vous",
        "signin_intro": "Une seule connexion pour les applications partagées du groupement hospitalier.",
        "for_app": "pour accéder à",
        "login_label": "Identifiant",
        "login_help": "Votre identifiant territorial, votre adresse e-mail, ou ÉTABLISSEMENT\\identifiant.",
        "password_label": "Mot de passe",
        "password_help": "Le mot de passe de votre session hospitalière.",
        "submit": "Se connecter",
        "invalid": "Identifiant ou mot de passe incorrect.",
        "throttled": "Trop de tentatives. Réessayez dans {seconds} secondes.",
        "site_heading": "Où travaillez-vous aujourd'hui ?",
        "site_intro": "Les applications sauront dans quel établissement vous exercez.",
        "site_legend": "Établissement",
        "site_last": "(dernier choix)",
        "site_submit": "Continuer",
        "site_done": "Vous travaillez maintenant à : {site}.",
        "signed_in": "Vous êtes connecté(e).",
        "change_site": "Changer d'établissement",
        "logout_heading": "Déconnexion",
        "logout_confirm": "Voulez-vous vous déconnecter de toutes les applications du groupement ?",
        "logout_submit": "Se déconnecter",
        "logged_out": "Vous êtes déconnecté(e) de toutes les applications. Vous pouvez laisser le poste.",
        "error_heading": "La demande ne peut pas aboutir",
        "error_expired": "Cette page a expiré. Revenez à l'application et recommencez.",
        "error_invalid_request": "L'application a envoyé une demande invalide : {detail}",
        "error_csrf": "Le formulaire a expiré ou ne vient pas de cette page. Recommencez.",
        "means_heading": "Moyens de connexion",
        "means_password": "Identifiant et mot de passe de votre établissement",
        "means_second_internal": "Depuis le réseau de l'établissement, le mot de passe suffit, sauf si "
        "l'application demande un second facteur.",
        "means_second_external": "Hors du réseau de l'établissement, un second facteur vous sera demandé "
        "après le mot de passe : code de votre application d'authentification ou clé de sécurité.",
        "means_second_required": "Cette application demande un second facteur après le mot de passe : "
        "code de votre application d'authentification ou clé de sécurité.",
        "upstream_heading": "Ou connectez-vous avec",
        "mfa_heading": "Confirmez votre identité",
        "mfa_intro": "Cette connexion demande un second facteur, en plus de votre mot de passe.",
        "mfa_code_label": "Code de vérification",
        "mfa_code_help": "Les 6 chiffres de votre application d'authentification, ou un de vos codes de "
        "secours.",
        "mfa_code_submit": "Vérifier",
        "mfa_key_heading": "Clé de sécurité",
        "mfa_key_submit": "Utiliser ma clé de sécurité",
        "mfa_key_needs_js": "La clé de sécurité demande JavaScript : utilisez plutôt un code.",
        "mfa_key_failed": "La clé de sécurité n'a pas répondu. Réessayez, ou utilisez un code.",
        "mfa_invalid": "Code incorrect ou expiré. Vérifiez l'heure de votre téléphone et saisissez le code "
        "affiché maintenant.",
        "mfa_key_invalid": "La clé de sécurité n'a pas été reconnue. Réessayez.",
        "mfa_throttled": "Trop de tentatives. Réessayez dans {seconds} secondes.",
        "mfa_none_heading": "Aucun second facteur enregistré",
        "mfa_none_enrol": "Cette connexion demande un second facteur, et vous n'en avez pas encore. "
        "Vous êtes sur le réseau de l'établissement : enregistrez-en un maintenant.",
        "mfa_none_refused": "Cette connexion demande un second facteur, et vous n'en avez pas encore. "
        "Un second facteur ne peut être enregistré que depuis le réseau d'un établissement du groupement "
        "(ou par le support informatique). Connectez-vous depuis un poste de l'établissement, ou "
        "contactez le support.",
        "security_heading": "Mes moyens de connexion",
        "security_intro": "Les seconds facteurs qui protègent votre compte.",
        "security_none": "Aucun second facteur enregistré.",
        "security_kind_totp": "Application d'authentification",
        "security_kind_webauthn": "Clé de sécurité",
        "security_added": "ajouté le {date}",
        "security_remove": "Retirer",
        "security_removed": "Le second facteur a été retiré.",
        "security_add_totp": "Ajouter une application d'authentification",
        "security_add_key": "Ajouter une clé de sécurité",
        "security_recovery_left": "Codes de secours restants : {count}",
        "security_recovery_new": "Générer de nouveaux codes de secours",
        "security_link": "Mes moyens de connexion",
        "security_refused": "Depuis ce réseau, vos moyens de connexion ne peuvent être gérés qu'après "
        "confirmation par un second facteur.",
        "totp_heading": "Application d'authentification",
        "totp_intro": "Scannez ce QR code avec votre application d'authentification (FreeOTP, Google "
        "Authenticator, Microsoft Authenticator...), puis saisissez le code qu'elle affiche.",
        "totp_secret": "Ou saisissez cette clé dans l'application :",
        "totp_label": "Nom de cet appareil",
        "totp_label_default": "Mon téléphone",
        "totp_submit": "Enregistrer",
        "key_heading": "Clé de sécurité",
        "key_intro": "Branchez votre clé de sécurité (ou utilisez l'authentificateur de cet appareil) puis "
        "appuyez sur le bouton.",
        "key_label_default": "Ma clé de sécurité",
        "key_submit": "Enregistrer ma clé de sécurité",
        "recovery_heading": "Vos codes de secours",
        "recovery_intro": "Si vous perdez votre second facteur, chacun de ces codes permet de vous connecter "
        "une fois. Notez-les et gardez-les en lieu sûr : ils ne seront plus affichés.",
        "enrolled": "Votre second facteur est enregistré.",
        "continue": "Continuer",
        "upstream_failed_heading": "Connexion avec {provider} impossible",
        "upstream_no_person": "Votre identité {provider} n'est rattachée à aucun professionnel en activité "
        "dans le groupement hospitalier. Si vous y travaillez, contactez le service informatique de votre "
        "établissement ; sinon, connectez-vous avec votre identifiant et votre mot de passe.",
        "upstream_external_refused": "Cette application est réservée aux professionnels du groupement "
        "hospitalier : votre identité {provider} n'y donne pas accès.",
        "upstream_cancelled": "La connexion avec {provider} a été annulée ou refusée.",
        "upstream_failed": "La réponse de {provider} n'a pas pu être vérifiée. Revenez à l'application et "
        "recommencez.",
        "upstream_unavailable": "{provider} ne répond pas. Réessayez plus tard, ou connectez-vous avec votre "
        "identifiant et votre mot de passe.",
        "upstream_unknown": "Ce fournisseur d'identité n'est pas configuré.",
        "upstream_not_offered": "Cette application n'accepte pas la connexion avec {provider}.",
        "upstream_back": "Revenir à la page de connexion",
        "switch_language": "English",
    },
    "en": {
        "title": "Territorial sign-in",
        "service": "GHT territorial identity",
        "skip": "Skip to content",
        "signin_heading": "Sign in",
        "signin_intro": "One sign-in for the hospital group's shared applications.",
        "for_app": "to use",
        "login_label": "Login",
        "login_help": "Your territorial login, your email address, or HOSPITAL\\login.",
        "password_label": "Password",
        "password_help": "The password of your hospital account.",
        "submit": "Sign in",
        "invalid": "Wrong login or password.",
        "throttled": "Too many attempts. Try again in {seconds} seconds.",
        "site_heading": "Where are you working today?",
        "site_intro": "Applications will know which hospital you are working at.",
        "site_legend": "Hospital",
        "site_last": "(last choice)",
        "site_submit": "Continue",
        "site_done": "You are now working at: {site}.",
        "signed_in": "You are signed in.",
        "change_site": "Change hospital",
        "logout_heading": "Sign out",
        "logout_confirm": "Do you want to sign out of every application of the hospital group?",
        "logout_submit": "Sign out",
        "logged_out": "You are signed out of every application. You may leave the workstation.",
        "error_heading": "The request cannot be completed",
        "error_expired": "This page has expired. Go back to the application and start again.",
        "error_invalid_request": "The application sent an invalid request: {detail}",
        "error_csrf": "The form has expired or does not come from this page. Please start again.",
        "means_heading": "Ways to sign in",
        "means_password": "Your hospital login and password",
        "means_second_internal": "From the hospital's network the password is enough, unless the "
        "application asks for a second factor.",
        "means_second_external": "From outside the hospital's network you will be asked for a second "
        "factor after the password: a code from your authenticator app or your security key.",
        "means_second_required": "This application asks for a second factor after the password: a code "
        "from your authenticator app or your security key.",
        "upstream_heading": "Or sign in with",
        "mfa_heading": "Confirm it is you",
        "mfa_intro": "This sign-in needs a second factor, as well as your password.",
        "mfa_code_label": "Verification code",
        "mfa_code_help": "The 6 digits of your authenticator app, or one of your recovery codes.",
        "mfa_code_submit": "Verify",
        "mfa_key_heading": "Security key",
        "mfa_key_submit": "Use my security key",
        "mfa_key_needs_js": "The security key needs JavaScript: use a code instead.",
        "mfa_key_failed": "The security key did not answer. Try again, or use a code.",
        "mfa_invalid": "Wrong or expired code. Check your phone's clock and type the code it shows now.",
        "mfa_key_invalid": "The security key was not recognised. Try again.",
        "mfa_throttled": "Too many attempts. Try again in {seconds} seconds.",
        "mfa_none_heading": "No second factor set up",
        "mfa_none_enrol": "This sign-in needs a second factor, and you have none yet. You are on the "
        "hospital's network: set one up now.",
        "mfa_none_refused": "This sign-in needs a second factor, and you have none yet. A second factor "
        "can only be set up from the network of one of the group's hospitals (or by IT support). Sign in "
        "from a hospital workstation, or contact IT support.",
        "security_heading": "My sign-in methods",
        "security_intro": "The second factors that protect your account.",
        "security_none": "No second factor set up.",
        "security_kind_totp": "Authenticator app",
        "security_kind_webauthn": "Security key",
        "security_added": "added on {date}",
        "security_remove": "Remove",
        "security_removed": "The second factor was removed.",
        "security_add_totp": "Add an authenticator app",
        "security_add_key": "Add a security key",
        "security_recovery_left": "Recovery codes left: {count}",
        "security_recovery_new": "Make new recovery codes",
        "security_link": "My sign-in methods",
        "security_refused": "From this network, your sign-in methods can only be managed after "
        "confirming with a second factor.",
        "totp_heading": "Authenticator app",
        "totp_intro": "Scan this QR code with your authenticator app (FreeOTP, Google Authenticator, "
        "Microsoft Authenticator...), then type the code it shows.",
        "totp_secret": "Or type this key into the app:",
        "totp_label": "Name of this device",
        "totp_label_default": "My phone",
        "totp_submit": "Save",
        "key_heading": "Security key",
        "key_intro": "Plug in your security key (or use this device's authenticator), then use the button.",
        "key_label_default": "My security key",
        "key_submit": "Register my security key",
        "recovery_heading": "Your recovery codes",
        "recovery_intro": "If you lose your second factor, each of these codes signs you in once. Write "
        "them down and keep them safe: they will not be shown again.",
        "enrolled": "Your second factor is set up.",
        "continue": "Continue",
        "upstream_failed_heading": "Signing in with {provider} failed",
        "upstream_no_person": "Your {provider} identity is not linked to any professional working in the "
        "hospital group. If you work there, contact your hospital's IT department; otherwise, sign in "
        "with your login and password.",
        "upstream_external_refused": "This application is reserved for the hospital group's professionals: "
        "your {provider} identity does not give access to it.",
        "upstream_cancelled": "Signing in with {provider} was cancelled or refused.",
        "upstream_failed": "The answer of {provider} could not be verified. Go back to the application and "
        "start again.",
        "upstream_unavailable": "{provider} does not answer. Try again later, or sign in with your login "
        "and password.",
        "upstream_unknown": "This identity provider is not configured.",
        "upstream_not_offered": "This application does not accept signing in with {provider}.",
        "upstream_back": "Back to the sign-in page",
        "switch_language": "Français",
    },
}


def pick_locale(*candidates: str | None, accept_language: str = "", default: str = "fr") -> str:
    """The first supported locale among explicit choices, then the browser's Accept-Language."""
    for candidate in candidates:
        for tag in (candidate or "").replace(",", " ").split():
            lang = tag.split("-")[0].lower()
            if lang in MESSAGES:
                return lang
    for part in accept_language.split(","):
        lang = part.split(";")[0].strip().split("-")[0].lower()
        if lang in MESSAGES:
            return lang
    return default
